"""Argument errors of fit/validate/test/predict found without their parser, from what it said
before (:mod:`ssl_norms.help_cache` keeps its option names, the types of its plain-typed options and
the options of the project's methods and data modules). Each check raises the parser's own message,
or leaves the words to the parser whenever only it can tell."""

from __future__ import annotations

import re
import types
import typing
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path

from ssl_norms.bad_input import _no_option, one_line_error, trainer_typo

_NEGATIVE_NUMBER = re.compile(r"-\d+\.?\d*(?:e[+-]?\d+)?")


def check(words: Sequence[str], known: dict) -> None:
    """Raise ArgumentError for the first error ``known`` proves, in the parser's order: a refused
    value, an option its class does not take, an unknown option."""
    check_values(words, known["types"])
    check_class_options(words, known["classes"])
    check_options(words, set(known["options"]))


_SIMPLE = {"int": int, "float": float, "bool": bool, "str": str, "null": type(None)}


def describe_type(hint: object) -> object:
    """A JSON form of a type made of int, float, bool, str, None, Literal and Union; None for any other."""
    for name, kind in _SIMPLE.items():
        if hint is kind:
            return name
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal and all(arg is None or isinstance(arg, (bool, int, float, str)) for arg in args):
        return {"literal": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [describe_type(arg) for arg in args]
        return None if None in parts else {"union": parts}
    return None


def type_of(description: object) -> object:
    if isinstance(description, str):
        return _SIMPLE[description]
    if "literal" in description:
        return typing.Literal[tuple(description["literal"])]
    return typing.Union[tuple(type_of(part) for part in description["union"])]


def check_values(words: Sequence[str], kinds: dict[str, object]) -> None:
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
        parser.add_argument(flag, type=type_of(kinds[flag]))
        try:
            parser.parse_args([f"{flag}={value}"])
        except ArgumentError as err:
            raise ArgumentError(None, one_line_error(str(err))) from None


def classes_of_config(path: Path, found: dict[str, str | None], seen: frozenset[Path] = frozenset()) -> None:
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
        classes_of_config(path.parent / str(base), found, seen)
    for kind in ("model", "data"):
        if kind in content:
            found[kind] = class_of_block(content[kind], path.parent, found[kind])


def class_of_block(block: object, folder: Path, before: str | None) -> str | None:
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


def check_class_options(words: Sequence[str], classes: dict[str, dict[str, list[str]]]) -> None:
    """Raise the parser's error for a ``--model.OPTION`` / ``--data.init_args.OPTION`` that the
    project class set at that point of the command line (by a config, ``--model`` or
    ``--model.class_path``) does not take. Classes the project does not define, options nested
    deeper and values only the parser can read are left to it."""
    found: dict[str, str | None] = {"model": None, "data": None}
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        value = value if eq else words[i + 1] if i + 1 < len(words) else ""
        if flag in ("--config", "-c"):
            classes_of_config(Path(value), found)
            continue
        match = re.fullmatch(r"--(model|data)(?:\.class_path)?", flag)
        if match:
            found[match[1]] = class_of_block(value, Path(), found[match[1]])
            continue
        match = re.fullmatch(r"--(model|data)\.(?:init_args\.)?(\w+)", flag)
        if not match or match[2] in ("help", "class_path", "init_args", "dict_kwargs") or found[match[1]] is None:
            continue
        kind, option = match[1], match[2]
        options = classes[kind].get(found[kind])
        if options is not None and option not in options:
            name = found[kind].rsplit(".", 1)[-1]
            raise ArgumentError(None, f"--{kind}: {_no_option(name, option, options, f'its options: --{kind}.help {name}')}")


def check_options(words: Sequence[str], known: set[str]) -> None:
    """Raise the parser's "unrecognized arguments" error (a trainer typo named as the parser names
    it) when ``words`` hold options no option of ``known`` is or begins with (argparse takes
    abbreviations). Options under a class (--model.*, --data.*, nested trainer options) are the
    class's (:func:`check_class_options`); an unknown short flag, a dotted option under an
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
