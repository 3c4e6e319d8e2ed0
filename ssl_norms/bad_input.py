"""Bad input to the Lightning commands, found before anything is built and told in one line.

* :func:`check_config_files`: every YAML file the command line names (``--config``, ``--data`` and
  ``--model`` files, and the files they build on) exists, parses, and is what its flag expects; a
  syntax error names the file and the line, a data block given as ``--config`` says to use ``--data``.
* :func:`check_trainer`: trainer settings Lightning accepts but a run cannot use (an lr schedule
  needs an end), or refuses only deep inside training with a traceback.
* :func:`one_line_error`: jsonargparse's nested multi-line report as the option at fault and the
  reason, e.g. "SimCLR has no option 'temprature' (did you mean 'temperature'?)".
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


class UsageError(ValueError):
    """A bad command line or config; printed as one line (exit 2)."""


# ---- config files --------------------------------------------------------------------------------
FILE_FLAGS = {"--config": "config", "--data": "data", "--model": "model"}  # flag -> what its file holds
_BLOCK_KEYS = {"class_path", "init_args", "dict_kwargs"}


def _flag_values(words: list[str]) -> Iterator[tuple[str, str]]:
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag in FILE_FLAGS and (eq or i + 1 < len(words)):
            yield flag, value if eq else words[i + 1]


def _is_file_name(value: str, flag: str) -> bool:
    """A value of ``flag`` that names a file (not inline YAML, not a class name such as ``SimCLR``)."""
    if any(mark in value for mark in ("\n", ": ", "{")) or value in ("", "null"):
        return False
    return flag == "--config" or Path(value).suffix in (".yaml", ".yml", ".json") or Path(value).is_file()


def check_config_files(words: list[str]) -> None:
    """Raise :class:`UsageError` for the first file of ``words`` that cannot serve its flag."""
    for flag, value in _flag_values(words):
        if _is_file_name(value, flag):
            _check_file(Path(value), FILE_FLAGS[flag], f"{flag} {value}")


def _load_yaml(path: Path, named: str) -> Any:
    if not path.exists():
        raise UsageError(f"{named}: no such file")
    if not path.is_file():
        raise UsageError(f"{named}: a directory, not a file")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text (YAML) file") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f", line {mark.line + 1}" if mark is not None else ""
        context = err.context.removeprefix("while parsing ") if err.context and err.problem else ""
        started = f" (in {context} from line {err.context_mark.line + 1})" if context and err.context_mark else ""
        raise UsageError(f"{path}{where}: YAML syntax error: {err.problem or err.context}{started}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: YAML syntax error: {' '.join(str(err).split())}") from None


def _check_file(path: Path, holds: str, named: str, seen: frozenset[Path] = frozenset()) -> None:
    """``path`` parses to a mapping; a config is not a data or model block; the files it builds on
    (``config:``, and in a config ``data:``/``model:`` files) pass the same checks."""
    content = _load_yaml(path, named)
    if content is None:
        raise UsageError(f"{path} is empty")
    if not isinstance(content, dict):
        raise UsageError(f"{path} must be a mapping of options, got a {type(content).__name__}")
    if holds == "config" and content.keys() <= _BLOCK_KEYS:
        block = _block_kind(content.get("class_path"))
        if block:
            raise UsageError(f"{path} is a {block} block, not a config: pass it with --{block} {path}")
    seen = seen | {path.resolve()}
    nested = [("config", holds), *([("data", "data"), ("model", "model")] if holds == "config" else [])]
    for key, kind in nested:
        value = content.get(key)
        for base in value if isinstance(value, list) else [value]:
            target = path.parent / base if isinstance(base, str) else None
            if target is not None and target.resolve() not in seen and _is_file_name(base, "--config" if key == "config" else "--data"):
                _check_file(target, kind, f"{path}: {key}: {base}", seen)


def _block_kind(class_path: Any) -> str | None:
    """``data`` or ``model`` for a class path of the project's data modules or methods."""
    from ssl_norms.data import SSLDataModule
    from ssl_norms.methods import SSLMethod

    cls = _import(class_path) if isinstance(class_path, str) else None
    for kind, base in (("data", SSLDataModule), ("model", SSLMethod)):
        if isinstance(cls, type) and issubclass(cls, base):
            return kind
    return None


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module or "builtins"), name)
    except (ImportError, AttributeError, ValueError):
        return None


# ---- trainer settings ----------------------------------------------------------------------------
def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_trainer(trainer: Any) -> None:
    """Raise :class:`UsageError` for trainer settings that would fail or misbehave once training runs."""
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_epochs is not None and (max_epochs < -1 or max_epochs == -1 and not _positive_int(max_steps)):
        raise UsageError(f"--trainer.max_epochs {max_epochs}: give a number of epochs >= 0 (-1, no limit, only with "
                         "--trainer.max_steps N: the lr schedule needs an end)")
    if max_steps is not None and max_steps < -1:
        raise UsageError(f"--trainer.max_steps {max_steps}: give a number of steps >= 0, or -1 for no limit")
    for key in ("accumulate_grad_batches", "check_val_every_n_epoch", "num_nodes"):
        value = trainer.get(key)
        if value is not None and not _positive_int(value):
            raise UsageError(f"--trainer.{key} {value}: give a positive whole number")
    devices = trainer.get("devices")
    count = int(devices) if isinstance(devices, str) and devices.lstrip("-").isdigit() else devices
    if isinstance(count, int) and not isinstance(count, bool) and count < 1 and count != -1:
        raise UsageError(f"--trainer.devices {devices}: give a number of devices >= 1, a list of device indices, -1 (all) or auto")
    accelerator = trainer.get("accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--trainer.accelerator {accelerator}: no GPU is visible here (torch.cuda.is_available() is "
                             "False); use --trainer.accelerator cpu or auto")


# ---- jsonargparse's reports as one line ----------------------------------------------------------
# Lines of jsonargparse's report that explain its type machinery rather than the user's mistake.
_PARSER_NOISE = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given class_path",
                 "Expected a <class 'NoneType'>")
_MISSING_CLASS = ("has no attribute", "No module named", "Expected a dot import path string")


def one_line_error(message: str) -> str:
    """The option at fault and the real reason, from jsonargparse's nested multi-line report (or a
    one-line message, improved where it misleads)."""
    text = str(message)
    lines = [line.strip().removeprefix("- ").strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) <= 1:
        return trainer_typo(lines[0] if lines else text)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([^"]+)"', text)))
    option = keys[0] if keys else ""
    given = next((line.partition(":")[2].strip() for line in lines if line.startswith("Given value:")), "")
    problem = _class_problem(lines, option, given)
    if problem:
        return problem
    reason = _reason(lines, given)
    return f"--{option}: {reason}" if option else reason


def _reason(lines: list[str], given: str) -> str:
    reasons = [line for line in lines if not line.startswith(_PARSER_NOISE)]
    if not reasons:
        return " ".join(lines)
    expected = [m[1] for m in (re.fullmatch(r"Expected an? (.+)", line) for line in reasons) if m]
    if len(expected) == len(reasons) > 1:  # a union of plain types and choices: name them all
        return f"expected {_union(expected)}, got {given!r}"
    concrete = [line for line in reasons if not line.startswith("Expected a path but")]
    return _finite((concrete or reasons)[0])


def _finite(reason: str) -> str:
    """jsonargparse refuses nan and inf as "Expected a <class 'float'>": say what is wrong with them."""
    match = re.fullmatch(r"Expected a <class 'float'>\. Got value: ([+-]?(?:nan|inf|infinity))", reason, re.IGNORECASE)
    return f"expected a finite number, got {match[1]}" if match else reason


def _union(kinds: list[str]) -> str:
    """``["<class 'bool'>", "<class 'int'>"]`` -> ``bool or int``; ``typing.Literal[...]`` choices
    become one list: ``one of 64, '32', 'bf16'``."""
    names, choices = [], []
    for kind in kinds:
        plain = re.fullmatch(r"<class '(?:.*\.)?([^.']+)'>", kind)
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", kind)
        if literal:
            choices.append(literal[1])
        else:
            names.append(plain[1] if plain else kind)
    return " or ".join(list(dict.fromkeys(names)) + ([f"one of {', '.join(choices)}"] if choices else []))


def _class_problem(lines: list[str], option: str, given: str) -> str | None:
    """A problem jsonargparse found with a class: an option it does not take, or no such class."""
    for i, line in enumerate(lines):
        match = re.fullmatch(r"Problem with given class_path '([^']+)':", line)
        missing_path = re.fullmatch(r"Expected a dot import path string: (.+)", line)
        if missing_path:
            return f"--{option}: {missing_path[1]} does not exist{_known_choices(option)}"
        if not match:
            continue
        class_path, detail = match[1], lines[i + 1] if i + 1 < len(lines) else ""
        name = class_path.rsplit(".", 1)[-1]
        unknown = re.fullmatch(r"Option '([^']+)' is not accepted", detail)
        if unknown:
            options = _options_of(_import(class_path))
            return f"--{option}: {_no_option(name, unknown[1], options, f'its options: --{option}.help {name}')}"
        if any(mark in detail for mark in _MISSING_CLASS):
            return f"--{option}: {class_path} does not exist{_known_choices(option)}"
        key = re.fullmatch(r'Parser key "([^"]+)":', detail)
        if key and i + 2 < len(lines) and option in ("model", "data"):
            return f"--{option}.init_args.{key[1]}: {_finite(lines[i + 2])}"
        if key and i + 2 < len(lines):
            return f"--{option}: {name} {key[1]}: {_finite(lines[i + 2])}"
        return f"--{option}: {name}: {detail}"
    if any(line.startswith("Import path does not correspond to a subclass") for line in lines):
        return f"--{option}: {given} is not one of the classes it takes{_known_choices(option)}"
    return None


def _no_option(owner: str, option: str, options: list[str], otherwise: str = "") -> str:
    """``owner has no option 'x' (did you mean 'y'?)``, the closest of ``options`` (else ``otherwise``)."""
    close = difflib.get_close_matches(option, options, n=1)
    hint = f"did you mean '{close[0]}'?" if close else otherwise
    return f"{owner} has no option '{option}'" + (f" ({hint})" if hint else "")


def _options_of(cls: Any) -> list[str]:
    """The options jsonargparse accepts for ``cls`` (its and its bases' ``__init__`` parameters)."""
    if not isinstance(cls, type):
        return []
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, fail_untyped=False)
    return sorted({key.split(".")[0] for key in parser.get_defaults().keys()})


def trainer_typo(line: str, options: list[str] | None = None) -> str:
    """A trainer option typo names the closest Trainer option (argparse lists it as unrecognized);
    ``options``: the Trainer's, when known without importing Lightning."""
    match = re.fullmatch(r"unrecognized arguments: --trainer\.([\w.]+)(?:=\S*)?(?: .*)?", line)
    if match:
        if options is None:
            from lightning.pytorch import Trainer

            options = [name for name in inspect.signature(Trainer.__init__).parameters if name != "self"]
        return _no_option("Trainer", match[1], options)
    return line


def project_classes(option: str) -> dict[str, type]:
    """The project's classes an option takes, by name: methods for ``model``, data modules for
    ``data``, callbacks for ``trainer.callbacks`` (empty for any other option)."""
    from lightning.pytorch.callbacks import Callback

    import ssl_norms.callbacks
    import ssl_norms.data
    import ssl_norms.methods
    from ssl_norms.data import SSLDataModule
    from ssl_norms.methods import SSLMethod

    base, package = {
        "model": (SSLMethod, ssl_norms.methods),
        "data": (SSLDataModule, ssl_norms.data),
        "trainer.callbacks": (Callback, ssl_norms.callbacks),
    }.get(option, (None, None))
    if base is None:
        return {}
    return {
        name: getattr(package, name) for name in sorted(dir(package))
        if isinstance(getattr(package, name), type) and issubclass(getattr(package, name), base) and getattr(package, name) is not base
    }


def project_class_options() -> dict[str, dict[str, list[str]]]:
    """For ``model`` and ``data``: the options of each project class, under every name a config
    may give it (``SimCLR``, ``ssl_norms.methods.SimCLR``, ``ssl_norms.methods.simclr.SimCLR``)."""
    found: dict[str, dict[str, list[str]]] = {}
    for option in ("model", "data"):
        found[option] = {}
        for name, cls in project_classes(option).items():
            options = _options_of(cls)
            package = "ssl_norms.methods" if option == "model" else "ssl_norms.data"
            for alias in (name, f"{package}.{name}", f"{cls.__module__}.{cls.__qualname__}"):
                found[option][alias] = options
    return found


def _known_choices(option: str) -> str:
    """For a bad --model / --data / callback class, name the project's classes that fit: that is the fix."""
    label = {"model": "known", "data": "known", "trainer.callbacks": "the project's callbacks"}.get(option)
    if label is None:
        return ""
    return f"; {label}: {', '.join(project_classes(option))}"
