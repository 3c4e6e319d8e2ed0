"""A command line built from a function's signature (ssl_norms.command_line), on toy commands."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from jsonargparse import ArgumentError

from ssl_norms.command_line import Member, Subcommands, run

if TYPE_CHECKING:
    from ssl_norms.analysis.loading import TrainedRun


def plot(
    source: str,
    target: str | None = None,
    *,
    scale: float = 1.0,
    steps: Sequence[int] = (1, 2),
    files: list[Path] | None = None,
    dry_run: bool = False,
    list_: bool = False,
    fit_args: Sequence[str] = (),
    run_cli: Callable[[list[str]], None] | None = None,
) -> dict:
    """Plot something.

    Args:
        scale: how much
    """
    return dict(source=source, target=target, scale=scale, steps=steps, files=files, dry_run=dry_run, list_=list_,
                fit_args=fit_args, run_cli=run_cli)


def test_positional_words_options_flags_and_lists():
    assert run(plot, "x", "", ["in"]) == dict(source="in", target=None, scale=1.0, steps=[1, 2], files=None, dry_run=False,
                                             list_=False, fit_args=[], run_cli=None)
    got = run(plot, "x", "", ["in", "out", "--scale", "2", "--steps", "3,4", "-5", "--files", "a", "b", "--dry-run", "--list",
                              "--", "--trainer.max_epochs=1"], run_cli=print)
    assert got == dict(source="in", target="out", scale=2.0, steps=[3, 4, -5], files=[Path("a"), Path("b")], dry_run=True,
                       list_=True, fit_args=["--trainer.max_epochs=1"], run_cli=print)
    assert run(plot, "x", "", ["in", "--steps=7", "--no_dry_run"])["steps"] == [7]


@pytest.mark.parametrize(
    "words, message",
    [
        (["in", "--scale", "big"], "Expected a <class 'float'>. Got value: big"),
        (["in", "--steps", "1.5"], "argument --steps: expected integers, got '1.5'"),
        (["in", "--fit_args", "x"], "unrecognized arguments: --fit_args x"),  # given by the caller only
        (["in", "--run_cli", "x"], "unrecognized arguments: --run_cli x"),
        ([], "required: source"),
    ],
)
def test_bad_words_raise_argument_errors(words, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        run(plot, "x", "", words)


def test_help_comes_from_the_docstring(capsys):
    with pytest.raises(SystemExit):
        run(plot, "prog", "the description", ["--help"])
    text = capsys.readouterr().out
    assert "the description" in text and "how much" in text and "--dry_run" in text and "--fit_args" not in text


def shared(name: str, *, out: str = "o", **options) -> tuple:
    return name, out, options


def alpha(*, k: int = 3, mode: str = "a") -> None:
    """Alpha does a."""


def beta(*, k: int = 3) -> None:
    """Beta does b."""


def test_subcommands_with_aliases_shared_options_and_a_default():
    def listing(*, list_: bool = False) -> str:
        return f"listed {list_}"

    command = Subcommands({
        "alpha": Member(functools.partial(shared, name="alpha"), (alpha,), aliases=("a",)),
        "both": Member(functools.partial(shared, name="both"), (alpha, beta), help="every one"),
    }, default=listing)
    assert run(command, "x", "", ["a", "--k", "5", "--out", "p"]) == ("alpha", "p", {"k": 5, "mode": "a"})
    assert run(command, "x", "", ["both", "--mode", "b"]) == ("both", "o", {"k": 3, "mode": "b"})
    assert run(command, "x", "", ["--list"]) == "listed True"
    with pytest.raises(ValueError, match="x takes no arguments after --"):
        run(command, "x", "", ["alpha", "--", "y"])
    with pytest.raises(ArgumentError, match="invalid choice: 'gamma'"):
        run(command, "x", "", ["gamma"])


def test_an_option_with_two_defaults_is_a_programming_error():
    def gamma(*, k: int = 4) -> None:
        """Gamma."""

    with pytest.raises(TypeError, match="option k of .*gamma has another default"):
        run(Subcommands({"g": Member(shared, (alpha, gamma))}), "x", "", ["g", "n"])


def study(run: TrainedRun, out_dir: Path, *, bins: int = 10) -> None:
    """Study a run (as an analysis: its first parameter's type is imported for type checking only)."""


def test_only_the_options_annotations_are_evaluated():
    command = Subcommands({"s": Member(functools.partial(shared, name="s"), (study,))})
    assert run(command, "x", "", ["s", "--bins", "5"]) == ("s", "o", {"bins": 5})
    with pytest.raises(ArgumentError, match="bins"):
        run(command, "x", "", ["s", "--bins", "many"])
