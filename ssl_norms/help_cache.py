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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from importlib import metadata
from pathlib import Path

from ssl_norms.bad_input import project_class_options
from ssl_norms.cache import cache_root
from ssl_norms.option_check import check, describe_type

ENV = "SSL_NORMS_HELP_CACHE"
# the packages whose classes and signatures make up the parser
PACKAGES = ("lightning", "jsonargparse", "torch", "torchvision", "torchmetrics", "timm", "wandb")
# settings of one run or session, not of what the parser offers
_RUN_STATE = ("SSL_NORMS_RUN_DIR", "SSL_NORMS_SWEEP", "SSL_NORMS_DEBUG", ENV)
_FILE_NAMES = re.compile(r"[\w./~-]+\.(?:ya?ml|json)\b")


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
        kinds = {option: describe_type(action._typehint) for action in parser._actions if hasattr(action, "_typehint")
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
    check(words[1:], json.loads(known))
    return None


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
