"""``ssl-norms``, the entry point: ``--help``, the project's commands (:mod:`ssl_norms.commands`) and
the one stderr line of every failure. It imports torch and Lightning only for a command that needs
them: LightningCLI (:mod:`ssl_norms.cli`) only for fit/validate/test/predict, so ``--help`` and a
project command's bad arguments answer at once, as do those commands' help and mistyped options
once their help was printed (:mod:`ssl_norms.help_cache`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError

from ssl_norms import help_cache
from ssl_norms.bad_input import UsageError, check_config_files, one_line_error
from ssl_norms.commands import COMMANDS, LIGHTNING_COMMANDS, run_command, usage

# Lightning's messages nobody asked for, by their start: its adverts for its cloud services and a
# note on how it counts the steps of a schedule.
UNASKED_INFO = ("💡 Tip: For seamless cloud logging", "💡 Tip: For seamless cloud uploads",
                "Loading `train_dataloader` to estimate number of stepping batches")
# Warnings about nothing a user wrote or can change: (message regex, category, module regex).
EXPECTED_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # a run dir holds only its own checkpoints (the run lock): continuing a run is not a hazard
    (r"Checkpoint directory .* exists and is not empty", UserWarning, r"lightning\.pytorch\.callbacks\.model_checkpoint"),
    # validate/test write into their own folder, not the checkpoint's, by design
    (r"The dirpath has changed from", UserWarning, r"lightning\.pytorch\.callbacks\.model_checkpoint"),
    # bf16-mixed is the default on bf16 hardware; the summary's size estimate is all this is about
    (r"Precision bf16-mixed is not supported by the model summary", UserWarning, r"lightning\.pytorch\.utilities\.model_summary"),
)


class _Stdout(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (looked up per message, as tests swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _is_wanted(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING and not str(record.msg).startswith(UNASKED_INFO)


def _lightning_info_to_stdout() -> None:
    """Lightning's progress messages (seed, devices) are information: stdout, without the
    :data:`UNASKED_INFO`. Its warnings and errors stay on stderr, where an error is then the only line."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if any(isinstance(handler, _Stdout) for handler in logger.handlers):
            continue
        for handler in logger.handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
        info = _Stdout()
        info.addFilter(_is_wanted)
        logger.addHandler(info)


def _quiet_expected_warnings() -> None:
    for message, category, module in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message, category, module)


def _loaded_types(*names: str) -> tuple[type, ...]:
    """The classes ``"module:Class"`` of modules already imported: an exception of a class whose
    module was never imported cannot have been raised, so nothing heavy is imported to match it."""
    found = []
    for name in names:
        module, _, attribute = name.partition(":")
        if module in sys.modules:
            found.append(getattr(sys.modules[module], attribute))
    return tuple(found)


def failure(err: BaseException, command: str) -> tuple[int, str]:
    """Exit code and the one stderr line for ``err``: 2 bad input, 3 a non-finite loss, 1 a failed
    write (disk full, permissions) or an internal fault, 130 an interrupt."""
    if isinstance(err, KeyboardInterrupt):
        return 130, "ssl-norms: interrupted"
    if isinstance(err, _loaded_types("ssl_norms.callbacks.guards:NonFiniteLossError")):
        return 3, f"ssl-norms: error: {err}"
    if isinstance(err, _loaded_types("ssl_norms.runs:CheckpointSaveError")):
        return 1, f"ssl-norms: error: {err}"
    # Bad input: the user can fix it (exit 2). MisconfigurationException is Lightning's word for it.
    lightning_misconfiguration = _loaded_types("lightning.fabric.utilities.exceptions:MisconfigurationException")
    if isinstance(err, (ValueError, ArgumentError, FileNotFoundError, *lightning_misconfiguration)):
        hint = f" (see `ssl-norms {command} --help`)" if isinstance(err, ArgumentError) else ""
        return 2, f"ssl-norms: error: {one_line_error(err)}{hint}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return 1, f"ssl-norms: error: {where}{err.strerror or err}"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return 1, f"ssl-norms: internal error: {type(err).__name__}: {first} (SSL_NORMS_DEBUG=1 for the traceback)"


def main(argv: list[str] | None = None) -> None:
    """``ssl-norms COMMAND ...``: LightningCLI for fit/validate/test/predict, :mod:`ssl_norms.commands`
    for the others. Whatever fails, stderr gets one line (:func:`failure`); ``SSL_NORMS_DEBUG=1``
    raises instead, with the traceback."""
    words = list(sys.argv[1:] if argv is None else argv)
    _quiet_expected_warnings()
    try:
        if words[:1] in (["-h"], ["--help"]):
            print(usage())
        elif words and words[0] in COMMANDS and words[0] not in LIGHTNING_COMMANDS:
            run_command(words[0], words[1:], run_cli=main)
        elif words and not words[0].startswith("-") and words[0] not in LIGHTNING_COMMANDS:
            raise UsageError(f"unknown command {words[0]!r}; commands: {', '.join(COMMANDS)}")
        else:
            check_config_files(words[1:])
            known = help_cache.answer(words) if words[:1] and words[0] in LIGHTNING_COMMANDS else None
            if known is not None:
                print(known, end="")
                return
            from ssl_norms.cli import run_lightning_cli  # torch and Lightning: only for their commands

            _lightning_info_to_stdout()  # after Lightning's import, which adds its own handler
            with help_cache.recording(words):
                run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except (Exception, KeyboardInterrupt) as err:
        if os.environ.get("SSL_NORMS_DEBUG"):
            raise
        code, line = failure(err, next((word for word in words if word in COMMANDS), "<command>"))
        print(line, file=sys.stderr, flush=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
