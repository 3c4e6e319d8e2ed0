"""The layering of the package: no import cycle, and imports run only downward.

Every ``import`` and ``from ... import`` of every module under ``ssl_norms/`` counts, including those
inside functions and under ``TYPE_CHECKING`` (parsed with ``ast``, never executed), and so does every
module the command registry (``ssl_norms.commands.COMMANDS``) imports when its command runs.

A package ``__init__``: importing ``a.b.c`` is an edge to the module ``a.b.c`` only, although Python
also runs ``a/__init__.py`` and ``a/b/__init__.py`` first. A package ``__init__`` that re-exports
its submodules would otherwise be in a cycle with every submodule that imports a sibling, which is
the intended layout. Importing the package itself (``from ssl_norms.data import X``) is an edge to
its ``__init__`` and counts like any other edge, so a submodule that imports its own package's
facade is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path


from conftest import REPO
from ssl_norms.commands import COMMANDS

PACKAGE = REPO / "ssl_norms"

# The bottom layer: pure tensor code that imports nothing of the project above it.
BOTTOM = ("ssl_norms.losses", "ssl_norms.models", "ssl_norms.grad_scale", "ssl_norms.distributed", "ssl_norms.contract")
# Helpers every layer may use; they import nothing but the bottom layer and each other.
NEUTRAL = ("ssl_norms.eval", "ssl_norms.figures", "ssl_norms.threads", "ssl_norms.lightning_compat", "ssl_norms.wandb_setup",
           "ssl_norms.command_line", "ssl_norms.runs", "ssl_norms.run_hooks", "ssl_norms.hardware")
# The command line: the entry point and the commands it dispatches to.
CLI = ("ssl_norms.main", "ssl_norms.cli", "ssl_norms.commands", "ssl_norms.sweep", "ssl_norms.slurm", "ssl_norms.resume")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(source: str, module: str, is_package: bool, modules) -> set[str]:
    """The project modules that ``source`` (the text of ``module``) imports, anywhere in it."""
    found = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y / from .. import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a non-module attribute: its module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {
    module: imports_of(path.read_text(), module, path.name == "__init__.py", MODULES)
    for module, path in MODULES.items()
}
GRAPH["ssl_norms.commands"] |= {command.target.partition(":")[0] for command in COMMANDS.values() if command.target}


def within(module: str, prefixes) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def violations(sources, forbidden=(), allowed=None) -> list[str]:
    """Imports from modules under ``sources`` of modules under ``forbidden`` or, given ``allowed``,
    of any project module not under ``allowed``."""
    return sorted(
        f"{m} imports {t}" for m in GRAPH if within(m, sources) for t in GRAPH[m]
        if within(t, forbidden) or (allowed is not None and not within(t, allowed))
    )


# ---- the checker itself ----------------------------------------------------------------------


def test_imports_are_found_anywhere_and_resolved():
    source = (
        "import os\nimport ssl_norms.data.base\nfrom ssl_norms.losses import info_nce\nfrom . import sibling\n"
        "from ..models import heads\nfrom .sibling import thing\n"
        "def f():\n    from ssl_norms.eval import knn_predict\n"
        "if TYPE_CHECKING:\n    from ssl_norms.methods import SSLMethod\n"
    )
    modules = {"ssl_norms.data.base", "ssl_norms.losses", "ssl_norms.callbacks.sibling", "ssl_norms.models", "ssl_norms.models.heads",
               "ssl_norms.eval", "ssl_norms.methods", "ssl_norms.callbacks.knn"}
    assert imports_of(source, "ssl_norms.callbacks.knn", False, modules) == {
        "ssl_norms.data.base", "ssl_norms.losses", "ssl_norms.callbacks.sibling", "ssl_norms.models.heads", "ssl_norms.eval", "ssl_norms.methods",
    }


def test_cycles_and_forbidden_imports_are_found(monkeypatch):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]
    monkeypatch.setitem(GRAPH, "ssl_norms.losses", {"ssl_norms.models.heads", "ssl_norms.methods.base"})
    assert violations(BOTTOM, allowed=BOTTOM) == ["ssl_norms.losses imports ssl_norms.methods.base"]
    assert violations(["ssl_norms.losses"], forbidden=["ssl_norms.models"]) == ["ssl_norms.losses imports ssl_norms.models.heads"]


def test_every_module_is_parsed():
    assert "ssl_norms.cli" in GRAPH and "ssl_norms.data" in GRAPH and len(GRAPH) > 50
    assert "ssl_norms.methods.base" in GRAPH["ssl_norms.methods.simclr"]
    assert {"ssl_norms.sweep", "ssl_norms.slurm", "ssl_norms.analysis.command", "ssl_norms.simulations.command"} <= GRAPH["ssl_norms.commands"]


# ---- the rules -------------------------------------------------------------------------------


def test_no_import_cycle_outside_data():
    # ssl_norms.cli names the entry point's main for `python -m ssl_norms.cli`; the entry point is
    # what imports the cli (for Lightning's commands), so that one edge is not a layer
    graph = {**GRAPH, "ssl_norms.cli": GRAPH["ssl_norms.cli"] - {"ssl_norms.main"}}
    outside = [c for c in cycles(graph) if not all(within(m, ["ssl_norms.data"]) for m in c)]
    assert outside == []


def test_data_has_no_import_cycle():
    data = {m: {t for t in targets if within(t, ["ssl_norms.data"])} for m, targets in GRAPH.items() if within(m, ["ssl_norms.data"])}
    assert cycles(data) == []


def test_the_bottom_layer_imports_nothing_above_it():
    assert violations(BOTTOM, allowed=BOTTOM) == []


def test_neutral_helpers_import_only_the_bottom_layer_and_each_other():
    assert violations(NEUTRAL, allowed=(*BOTTOM, *NEUTRAL)) == []


def test_methods_never_import_callbacks_analysis_or_the_cli():
    assert violations(["ssl_norms.methods"], ["ssl_norms.callbacks", "ssl_norms.analysis", *CLI]) == []


def test_callbacks_never_import_methods_analysis_or_the_cli():
    assert violations(["ssl_norms.callbacks"], ["ssl_norms.methods", "ssl_norms.analysis", *CLI]) == []


def test_simulations_never_import_analysis_callbacks_methods_or_the_cli():
    forbidden = ["ssl_norms.analysis", "ssl_norms.callbacks", "ssl_norms.methods", "ssl_norms.cli", "ssl_norms.sweep", "ssl_norms.slurm"]
    assert violations(["ssl_norms.simulations"], forbidden) == []


def test_only_the_entry_point_knows_the_cli():
    assert sorted(m for m, targets in GRAPH.items() if "ssl_norms.cli" in targets) == ["ssl_norms.main"]
    assert sorted(m for m, targets in GRAPH.items() if "ssl_norms.main" in targets) == ["ssl_norms.cli"]
