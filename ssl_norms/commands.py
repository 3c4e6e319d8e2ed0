"""Every ``ssl-norms`` command, registered once: its name, one line of help (what ``ssl-norms --help``
lists) and the function that runs it, imported only when the command runs.

Lightning's commands (fit, validate, test, predict) are parsed by LightningCLI
(:mod:`ssl_norms.cli`). Every other command is a plain function (or :class:`Subcommands` of
functions) whose command line :mod:`ssl_norms.command_line` builds from its signature.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ssl_norms import command_line


@dataclass(frozen=True)
class Command:
    help: str  # one line
    target: str | None = None  # "module:attribute": a function or command_line.Subcommands; None: LightningCLI


COMMANDS: dict[str, Command] = {
    "fit": Command("train a method (LightningCLI; writes a run directory)"),
    "validate": Command("evaluate a checkpoint on the validation data (LightningCLI)"),
    "test": Command("evaluate a checkpoint on the test data (LightningCLI)"),
    "predict": Command("embed data with a checkpoint (LightningCLI)"),
    "sweep": Command("list or run the points of a sweep file", "ssl_norms.sweep:sweep"),
    "compare": Command("results table and overlaid norm and k-NN curves of any runs", "ssl_norms.compare:compare"),
    "slurm": Command("submit fits and sweep arrays with the sbatch templates", "ssl_norms.slurm:COMMAND"),
    "analyze": Command("the paper's analyses of trained runs (Fig 3-5, S3-S6, Table S1)", "ssl_norms.analysis.command:COMMAND"),
    "export": Command("write a checkpoint's backbone as a state_dict with its architecture recipe", "ssl_norms.export:export"),
    "simulate": Command("the paper's Section 3-4 simulations (Fig 2a-c, theory checks)", "ssl_norms.simulations.command:COMMAND"),
}

LIGHTNING_COMMANDS = tuple(name for name, command in COMMANDS.items() if command.target is None)


def usage() -> str:
    """``ssl-norms --help``: every command with its line of help."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    return "usage: ssl-norms COMMAND [options]   (ssl-norms COMMAND --help for its options)\n\ncommands:\n" + "\n".join(lines)


def run_command(name: str, words: Sequence[str], run_cli: Callable[[list[str]], None]) -> Any:
    """Run the project command ``name`` on ``words``; ``run_cli`` is the ``ssl-norms`` entry point,
    for commands that run fits."""
    module, _, attribute = COMMANDS[name].target.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    return command_line.run(target, f"ssl-norms {name}", COMMANDS[name].help, words, run_cli=run_cli)
