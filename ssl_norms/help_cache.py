"""The help of fit/validate/test/predict, kept: their parser is LightningCLI's, and building it
imports torch, Lightning and torchmetrics (5-6 s on 2 cores). What it prints depends only on the
words given, the files they name, ssl_norms' source, the installed packages, the terminal width and
the SSL_NORMS_* settings, so a help text is stored under a hash of those the first time and printed
from there after (0.1 s). Whenever the parser is built, the command's option names and the types
of its plain-typed options are kept as well, with the options of the project's methods and data
modules: a mistyped option, or a value such an option refuses, is then answered at once with the
parser's own message. ``SSL_NORMS_HELP_CACHE=0`` always builds the parser.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import types
import typing
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from importlib import metadata
from pathlib import Path

from ssl_norms.bad_input import _no_option, one_line_error, project_class_options, trainer_typo
from ssl_norms.cache import cache_root

ENV = "SSL_NORMS_HELP_CACHE"
# the packages whose classes and signatures make up the parser
PACKAGES = ("lightning", "jsonargparse", "torch", "torchvision", "torchmetrics", "timm", "wandb")
# settings of one run or session, not of what the parser offers
_RUN_STATE = ("SSL_NORMS_RUN_DIR", "SSL_NORMS_SWEEP", "SSL_NORMS_DEBUG", ENV)
_FILE_NAMES = re.compile(r"[\w./~-]+\.(?:ya?ml|json)\b")
_NEGATIVE_NUMBER = re.compile(r"-\d+\.?\d*(?:e[+-]?\d+)?")


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def asks_for_help(words: Sequence[str]) -> bool:
    return any(word in ("-h", "--help") or (word.startswith("--") and word.endswith(".help")) for word in words)


def _files(words: Sequence[str]) -> Iterator[Path]:
    """The files the words name, and the files those name (a config's nested configs), once each."""
    seen: set[Path] = set()
    todo = [Path(word.partition("=")[2] or word) for word in words]
    while todo:
        path = todo.pop()
        try:
            if not path.is_file() or path.resolve() in seen:
                continue
        except OSError:  # a word too long or odd to be a path
            continue
        seen.add(path.resolve())
        yield path
        if path.suffix in (".yaml", ".yml", ".json"):
            for name in _FILE_NAMES.findall(path.read_text(errors="replace")):
                todo += [Path(name).expanduser(), path.parent / name]


def _key(words: Sequence[str], width: bool = True) -> str:
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        digest.update(repr(parts).encode())

    add(sys.version, sys.executable, list(words), shutil.get_terminal_size().columns if width else None)
    add(sorted((k, v) for k, v in os.environ.items() if k.startswith(("SSL_NORMS_", "JSONARGPARSE_")) and k not in _RUN_STATE))
    for name in PACKAGES:
        try:
            add(name, metadata.version(name))
        except metadata.PackageNotFoundError:
            add(name, None)
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        add(str(path.relative_to(package)), stat.st_mtime_ns, stat.st_size)
    for path in _files(words):  # a config by its content; any other file (a checkpoint) by size and time
        stat = path.stat()
        add(str(path), path.read_bytes() if path.suffix in (".yaml", ".yml", ".json") else (stat.st_size, stat.st_mtime_ns))
    return digest.hexdigest()[:32]


def _path(words: Sequence[str]) -> Path:
    return cache_root() / "cli-help" / f"{_key(words)}.txt"


def _options_path(command: str) -> Path:
    """The options of ``COMMAND``, whatever the width its help was printed at (a run's log, a terminal)."""
    return cache_root() / "cli-help" / f"{_key([command, '--help'], width=False)}.options"


def _sealed(text: str) -> str:
    return f"{hashlib.sha256(text.encode()).hexdigest()}\n{text}"


def _unsealed(path: Path) -> str | None:
    """The text written by :func:`_write`, or None when missing or damaged (a disk error, a partial copy)."""
    try:
        digest, _, text = path.read_text().partition("\n")
    except (OSError, ValueError):
        return None
    return text if hashlib.sha256(text.encode()).hexdigest() == digest else None


def stored(words: Sequence[str]) -> str | None:
    return _unsealed(_path(words))


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all, under its checksum; a cache that cannot be written is no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(_sealed(text))
        os.replace(partial, path)
    except OSError:
        pass


def store(words: Sequence[str], text: str) -> None:
    """Keep the help ``text`` printed for ``words``."""
    _write(_path(words), text)


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str, "null": type(None)}


def _describe(hint: object) -> object:
    """A JSON form of a type made of int, float, bool, str, None, Literal and Union; None for any other."""
    for name, kind in _SIMPLE.items():
        if hint is kind:
            return name
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal and all(arg is None or isinstance(arg, (bool, int, float, str)) for arg in args):
        return {"literal": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(arg) for arg in args]
        return None if None in parts else {"union": parts}
    return None


def _hint(description: object) -> object:
    if isinstance(description, str):
        return _SIMPLE[description]
    if "literal" in description:
        return typing.Literal[tuple(description["literal"])]
    return typing.Union[tuple(_hint(part) for part in description["union"])]


def keep_help(command: str, parser) -> None:
    """Keep what the command's ``parser`` (built for a run, or to print help) says: its help text,
    its option names, the types of its plain-typed options, and the options of the project's
    methods and data modules (imported by then)."""
    if not enabled():
        return
    if stored([command, "--help"]) is None:
        store([command, "--help"], parser.format_help())
    if _unsealed(_options_path(command)) is None:
        options = sorted({option for action in parser._actions for option in action.option_strings})
        kinds = {option: _describe(action._typehint) for action in parser._actions if hasattr(action, "_typehint")
                 for option in action.option_strings if not option.endswith("+")}
        _write(_options_path(command), json.dumps({
            "options": options, "classes": project_class_options(),
            "types": {option: kind for option, kind in kinds.items() if kind is not None},
        }))


def answer(words: Sequence[str]) -> str | None:
    """The stored help for ``words`` (command first), or None when it must be built. Raises
    ArgumentError, as the parser would, for an option the command's stored help proves unknown."""
    if not enabled():
        return None
    if asks_for_help(words):
        return stored(words)
    known = _unsealed(_options_path(words[0]))
    if known is None:
        return None
    known = json.loads(known)
    _check_values(words[1:], known["types"])  # the parser, too, says a bad value before an unknown option
    _check_class_options(words[1:], known["classes"])
    _check_options(words[1:], set(known["options"]))
    return None


def _check_values(words: Sequence[str], kinds: dict[str, object]) -> None:
    """Raise the parser's error for a value its plain-typed option (an int, a choice, ...) refuses:
    the same check, jsonargparse's, on a parser of that one option."""
    from jsonargparse import ArgumentParser

    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag not in kinds or not (eq or i + 1 < len(words)):
            continue
        value = value if eq else words[i + 1]
        if not eq and value.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(value):
            continue  # no value given: the parser says so
        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument(flag, type=_hint(kinds[flag]))
        try:
            parser.parse_args([f"{flag}={value}"])
        except ArgumentError as err:
            raise ArgumentError(None, one_line_error(str(err))) from None


def _classes_of_config(path: Path, found: dict[str, str | None], seen: frozenset[Path] = frozenset()) -> None:
    """Update ``found`` (``model``/``data`` -> class name, None: not known here) by the config at
    ``path``: the configs it builds on first, then its own blocks (a class path, or a file holding one)."""
    import yaml  # here: only a command line with a config needs it

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        content = None
    if not isinstance(content, dict) or path.resolve() in seen:
        found.update(model=None, data=None)
        return
    seen = seen | {path.resolve()}
    bases = content.get("config")
    for base in bases if isinstance(bases, list) else [bases] if bases else []:
        _classes_of_config(path.parent / str(base), found, seen)
    for kind in ("model", "data"):
        if kind in content:
            found[kind] = _class_of_block(content[kind], path.parent, found[kind])


def _class_of_block(block: object, folder: Path, before: str | None) -> str | None:
    """The class a ``model:``/``data:`` value sets: a class path, a file of one, or init_args alone
    (the class before stays); None when only the parser can tell."""
    import yaml

    if isinstance(block, str) and Path(folder, block).suffix in (".yaml", ".yml"):
        try:
            block = yaml.safe_load(Path(folder, block).read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return None
    if isinstance(block, str):
        return block if re.fullmatch(r"[\w.]+", block) else None
    if isinstance(block, dict) and set(block) <= {"class_path", "init_args", "dict_kwargs"}:
        return block["class_path"] if isinstance(block.get("class_path"), str) else before
    return None


def _check_class_options(words: Sequence[str], classes: dict[str, dict[str, list[str]]]) -> None:
    """Raise the parser's error for a ``--model.OPTION`` / ``--data.init_args.OPTION`` that the
    project class set at that point of the command line (by a config, ``--model`` or
    ``--model.class_path``) does not take. Classes the project does not define, options nested
    deeper and values only the parser can read are left to it."""
    found: dict[str, str | None] = {"model": None, "data": None}
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        value = value if eq else words[i + 1] if i + 1 < len(words) else ""
        if flag in ("--config", "-c"):
            _classes_of_config(Path(value), found)
            continue
        match = re.fullmatch(r"--(model|data)(?:\.class_path)?", flag)
        if match:
            found[match[1]] = _class_of_block(value, Path(), found[match[1]])
            continue
        match = re.fullmatch(r"--(model|data)\.(?:init_args\.)?(\w+)", flag)
        if not match or match[2] in ("help", "class_path", "init_args", "dict_kwargs") or found[match[1]] is None:
            continue
        kind, option = match[1], match[2]
        options = classes[kind].get(found[kind])
        if options is not None and option not in options:
            name = found[kind].rsplit(".", 1)[-1]
            raise ArgumentError(None, f"--{kind}: {_no_option(name, option, options, f'its options: --{kind}.help {name}')}")


def _check_options(words: Sequence[str], known: set[str]) -> None:
    """Raise the parser's "unrecognized arguments" error (a trainer typo named as the parser names
    it) when ``words`` hold options no option of ``known`` is or begins with (argparse takes
    abbreviations). Options under a class (--model.*, --data.*, nested trainer options) are the
    class's (:func:`_check_class_options`); an unknown short flag, a dotted option under an
    abbreviated group or ``--`` leaves the decision to the parser."""
    extras, taking_values = [], False
    for word in words:
        if word == "--":
            return
        if word.startswith("--"):
            name = word.partition("=")[0].rstrip("+")
            if any(option.startswith(name) for option in known):
                taking_values = False
                continue
            if "." in name and not (name.startswith("--trainer.") and name.count(".") == 1):
                group = name.split(".")[0]
                if group in known:  # --model.*, --data.*, nested --trainer.*: their class's options
                    taking_values = False
                    continue
                if any(option.startswith(group) for option in known):
                    return
            extras.append(word)
            taking_values = True
        elif word.startswith("-") and not _NEGATIVE_NUMBER.fullmatch(word):
            if word not in known and word not in ("-c", "-h"):
                return
            taking_values = False
        elif taking_values:
            extras.append(word)
    if extras:
        trainer = sorted({option[len("--trainer."):] for option in known if option.count(".") == 1 and option.startswith("--trainer.")})
        raise ArgumentError(None, trainer_typo(f"unrecognized arguments: {' '.join(extras)}", trainer))


class _Tee(io.StringIO):
    def __init__(self, stream) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        return super().write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # the help is formatted for where it goes
        return self.stream.isatty()


@contextmanager
def recording(words: Sequence[str]) -> Iterator[None]:
    """Run the block (the parser printing help, then exiting) and keep what it printed."""
    if not (enabled() and asks_for_help(words)):
        yield
        return
    tee = _Tee(sys.stdout)
    try:
        with redirect_stdout(tee):
            yield
    except SystemExit as exit_:
        if exit_.code in (0, None) and tee.getvalue():
            store(words, tee.getvalue())
        raise
