"""How a command line is built from a function: jsonargparse reads its signature.

* parameters before ``*`` are positional words (a required list: one or more words), keyword-only parameters are ``--options``; the
  annotation is the type (checked by jsonargparse), the default the default and the docstring's
  ``Args:`` entry the help;
* a ``bool`` is a flag (``--dry_run``, ``--dry_run false``, ``--no_dry_run``); a list takes several words, a list of
  numbers also comma-separated ones (``--norms 0.5 1`` = ``--norms 0.5,1``); ``-`` and ``_`` are
  interchangeable in option names;
* two parameters are not options: ``fit_args`` receives the words after ``--`` (arguments for
  every ``ssl-norms fit`` the command runs) and ``run_cli`` the ``ssl-norms`` entry point, so a
  command can run a fit in this process without importing the CLI.

A command with sub-commands (``slurm array``, ``simulate fig2a``) is a :class:`Subcommands`.
The commands themselves are registered in :mod:`ssl_norms.commands`.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import ActionYesNo, ArgumentParser

INJECTED = ("fit_args", "run_cli")  # given by the caller, never options


@dataclass(frozen=True)
class Member:
    """One sub-command: ``run`` is called with the parsed options. Its options are the parameters
    of ``run`` and the keyword-only parameters of ``options_from`` (which ``run`` takes as
    ``**options``), e.g. a simulation's settings next to the output options of the runner."""

    run: Callable[..., Any]
    options_from: tuple[Callable[..., Any], ...] = ()
    help: str | None = None  # default: help_line of options_from[0], else of run
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Subcommands:
    """A command whose first word picks a member; ``default`` runs when none is named (its keyword
    parameters are options given before the member, e.g. ``simulate --list``)."""

    members: Mapping[str, Callable[..., Any] | Member]
    default: Callable[..., Any] | None = None

    def member(self, name: str) -> Member:
        """The member ``name`` (or the one with the alias ``name``)."""
        members = {key: value if isinstance(value, Member) else Member(value) for key, value in self.members.items()}
        return members.get(name) or next(member for member in members.values() if name in member.aliases)


def split_fit_args(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """A command's own words and the words after the first ``--``."""
    words = list(words)
    if "--" not in words:
        return words, []
    cut = words.index("--")
    return words[:cut], words[cut + 1:]


def run(target: Callable[..., Any] | Subcommands, prog: str, description: str, words: Sequence[str], **injected: Any) -> Any:
    """Parse ``words`` for ``target`` (a function or :class:`Subcommands`) and call what they name,
    with the words after ``--`` as ``fit_args`` and ``injected`` values (``run_cli``) where it takes
    them. Bad input raises ``jsonargparse.ArgumentError`` or ``ValueError``."""
    own, fit_args = split_fit_args(words)
    cfg = build_parser(prog, target, description).parse_args(_underscored(own))
    if isinstance(target, Subcommands):
        chosen = cfg.get("subcommand")
        if chosen is None:
            if target.default is None:
                raise ValueError(f"{prog} needs one of: {', '.join(target.members)}")
            function, options = target.default, cfg
        else:
            function, options = target.member(chosen).run, cfg[chosen]
    else:
        function, options = target, cfg
    accepted = inspect.signature(function).parameters
    if fit_args and "fit_args" not in accepted:
        raise ValueError(f"{prog} takes no arguments after --")
    given = {"fit_args": fit_args, **injected}
    options = {key: value for key, value in vars(options).items() if key not in ("subcommand", "__path__")}
    return function(**options, **{key: value for key, value in given.items() if key in accepted})


def build_parser(prog: str, target: Callable[..., Any] | Subcommands, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    if not isinstance(target, Subcommands):
        add_options(parser, target)
        return parser
    if target.default is not None:
        add_options(parser, target.default)
    members = parser.add_subcommands(required=target.default is None)
    for name in target.members:
        member = target.member(name)
        help = member.help or help_line(member.options_from[0] if member.options_from else member.run)
        sub = ArgumentParser(description=help)
        add_options(sub, member.run, *member.options_from)
        members.add_subcommand(name, sub, help=help, aliases=member.aliases)
    return parser


def add_options(parser: ArgumentParser, function: Callable[..., Any], *options_from: Callable[..., Any]) -> None:
    """The parameters of ``function`` and the keyword-only parameters of ``options_from`` as
    arguments of ``parser`` (see the module docstring). A parameter in several functions is added
    once and must have the same default in each; the keywords a ``functools.partial`` binds are not
    options."""
    defaults: dict[str, Any] = {}
    for position, source in enumerate((function, *options_from)):
        bound = source.keywords if isinstance(source, functools.partial) else {}
        source = source.func if isinstance(source, functools.partial) else source
        params = [param for param in inspect.signature(source).parameters.values()
                  if param.name not in (*INJECTED, *bound) and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
                  and (position == 0 or param.kind is param.KEYWORD_ONLY)]
        hints, docs = _type_hints(source, [param.name for param in params]), _parameter_docs(source)
        for param in params:
            if param.name in defaults:
                if defaults[param.name] != param.default:
                    raise TypeError(f"option {param.name} of {source.__qualname__} has another default elsewhere")
                continue
            defaults[param.name] = param.default
            _add(parser, param, hints.get(param.name, str), docs.get(param.name))


def _add(parser: ArgumentParser, param: inspect.Parameter, hint: Any, help: str | None) -> None:
    required = param.default is param.empty
    if param.kind is not param.KEYWORD_ONLY:  # a positional word; a list: one or more words
        element = _list_element(hint)
        if element is not None and required:
            parser.add_argument(param.name, type=element, nargs="+", help=help)
            return
        parser.add_argument(param.name, type=hint, help=help, **({} if required else {"nargs": "?", "default": param.default}))
        return
    flag = "--" + param.name.rstrip("_")  # list_ -> --list: a trailing underscore avoids a builtin's name
    default = list(param.default) if isinstance(param.default, tuple) else param.default
    option = {"dest": param.name, "help": help, "required": required} | ({} if required else {"default": default})
    inner = _without_none(hint)
    element = _list_element(inner)
    if inner is bool:
        parser.add_argument(flag, action=ActionYesNo, nargs="?", **option)  # --x, --x false, --no_x
    elif element in (int, float):
        parser.add_argument(flag, action=_NumberList, element=element, **option)
    elif element is not None:
        parser.add_argument(flag, type=element, nargs="+", **option)
    else:
        parser.add_argument(flag, type=hint, **option)


class _NumberList(argparse.Action):
    """Several words and/or comma-separated numbers: ``--norms 0.5 1`` = ``--norms 0.5,1``."""

    def __init__(self, *args: Any, element: type, **kwargs: Any) -> None:
        self.element = element
        super().__init__(*args, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        numbers = []
        for part in (part for word in values for part in word.split(",") if part):
            try:
                numbers.append(self.element(part))
            except ValueError:
                kind = "integers" if self.element is int else "numbers"
                raise argparse.ArgumentError(self, f"expected {kind}, got {part!r}") from None
        setattr(namespace, self.dest, numbers)


def _without_none(hint: Any) -> Any:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _list_element(hint: Any) -> Any:
    """``X`` of ``list[X]``, ``Sequence[X]`` or ``tuple[X, ...]``; None for anything else."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, Sequence) and len(args) == 1:
        return args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _type_hints(function: Callable[..., Any], names: Sequence[str]) -> dict[str, Any]:
    """The evaluated annotations of ``function``'s parameters ``names`` only: the others may name a
    type imported for type checking only (an analysis's ``run: TrainedRun``), so that a parser is
    built without importing torch."""
    function = inspect.unwrap(function)
    wanted = {name: hint for name, hint in function.__annotations__.items() if name in names}
    return typing.get_type_hints(types.SimpleNamespace(__annotations__=wanted), function.__globals__)


def _parameter_docs(function: Callable[..., Any]) -> dict[str, str]:
    """The ``Args:`` entries of a docstring (docstring-parser comes with jsonargparse[signatures])."""
    from docstring_parser import parse

    return {param.arg_name: param.description for param in parse(inspect.getdoc(function) or "").params if param.description}


def help_line(function: Callable[..., Any]) -> str:
    """The first paragraph of ``function``'s docstring, on one line."""
    function = function.func if isinstance(function, functools.partial) else function
    return (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")


def _underscored(words: list[str]) -> list[str]:
    """``--dry-run`` -> ``--dry_run`` (option names only; values stay as they are)."""
    out = []
    for word in words:
        if word.startswith("--") and len(word) > 2:
            key, eq, value = word[2:].partition("=")
            word = "--" + key.replace("-", "_") + eq + value
        out.append(word)
    return out
