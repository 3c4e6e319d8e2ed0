"""The help of fit/validate/test/predict, kept: their parser is LightningCLI's, and building it
imports torch, Lightning and torchmetrics (5-6 s on 2 cores). What it prints depends only on the
words given, the files they name, ssl_norms' source, the installed packages, the terminal width and
the SSL_NORMS_* settings, so a help text is stored under a hash of those the first time and printed
from there after (0.2 s). The stored ``COMMAND --help`` also names every option the command takes,
which answers a mistyped ``--option`` or ``--trainer.option`` at once, with the parser's message.
``SSL_NORMS_HELP_CACHE=0`` always builds the parser.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import sys
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from importlib import metadata
from pathlib import Path

from ssl_norms.bad_input import trainer_typo
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
    for path in _files(words):
        add(str(path), path.read_bytes())
    return digest.hexdigest()[:32]


def _path(words: Sequence[str]) -> Path:
    return cache_root() / "cli-help" / f"{_key(words)}.txt"


def _options_path(command: str) -> Path:
    """The options of ``COMMAND``, whatever the width its help was printed at (a run's log, a terminal)."""
    return cache_root() / "cli-help" / f"{_key([command, '--help'], width=False)}.options"


def stored(words: Sequence[str]) -> str | None:
    try:
        return _path(words).read_text()
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all; a cache that cannot be written is no error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(text)
        os.replace(partial, path)
    except OSError:
        pass


def store(words: Sequence[str], text: str) -> None:
    """Keep ``text`` for ``words``, and a command's options with its plain ``--help``."""
    _write(_path(words), text)
    if len(words) == 2 and words[1] == "--help":
        _write(_options_path(words[0]), "\n".join(sorted(set(re.findall(r"--[A-Za-z_][\w.+-]*", text)))) + "\n")


def keep_help(command: str, render) -> None:
    """Store ``COMMAND --help`` from a parser built for another reason (a run), unless stored."""
    if enabled() and stored([command, "--help"]) is None:
        store([command, "--help"], render())


def answer(words: Sequence[str]) -> str | None:
    """The stored help for ``words`` (command first), or None when it must be built. Raises
    ArgumentError, as the parser would, for an option the command's stored help proves unknown."""
    if not enabled():
        return None
    if asks_for_help(words):
        return stored(words)
    try:
        known = set(_options_path(words[0]).read_text().split())
    except OSError:
        return None
    _check_options(words[1:], known)
    return None


def _check_options(words: Sequence[str], known: set[str]) -> None:
    """Raise the parser's "unrecognized arguments" error (a trainer typo named as the parser names
    it) when ``words`` hold options no option of ``known`` is or begins with (argparse takes
    abbreviations). Any word whose meaning only the parser knows (--model.*, --data.*, nested
    trainer options, unknown short flags, ``--``) leaves the decision to it."""
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
