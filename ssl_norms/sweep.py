"""Sweep files: one plain YAML file lists a grid of runs; ``ssl-norms sweep`` lists or runs its points.

A sweep file::

    name: table1-simclr-cifar100        # run dirs: $SSL_NORMS_RUNS/<name>/<point label>
    config: ../simclr/cifar100.yaml     # base config(s), relative to this file (str or list)
    fixed:                              # overrides for every point (dotted CLI keys)
      trainer.max_epochs: 100
    grid:                               # cartesian product; the first axis varies slowest
      cut:                              # an axis of override mappings, each with an optional label
        - {label: c1, trainer.callbacks+: {class_path: ssl_norms.callbacks.CutInit, init_args: {c: 1}}}
        - {label: c2, trainer.callbacks+: {class_path: ssl_norms.callbacks.CutInit, init_args: {c: 2}}}
      model.init_args.weight_decay: [1.0e-8, 1.0e-6]   # an axis of values for one key
      seed_everything: [0, 1, 2]        # seeds: points differing only in seed form one setting
    points:                             # optional explicit points, after the grid points
      - {label: long, trainer.max_epochs: 500}

In a mapping, ``label`` names the value in the run dir and ``config`` adds config file(s) (after
the base configs, e.g. a preset such as ``configs/presets/gradscale_simclr.yaml``); every other
key is a CLI override ``--key=value`` (lists and mappings are passed as JSON; ``trainer.callbacks+``
appends a callback to the base config's list).

The seed axis ``seed_everything`` names its run dirs ``seed=<value>``; the points that differ only in
their seed form one *setting*, which ``--summary`` (and the table ``--all`` ends with) reports as
mean +- std over its seeds.

A point's run dir depends only on the runs root, the sweep name and the point's values, so a SLURM
array index and a local loop map to the same directory, and running a point whose
``checkpoints/last.ckpt`` exists resumes it with ``--ckpt_path last``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


TOP_LEVEL_KEYS = {"name", "config", "fixed", "grid", "points", "description"}
SPECIAL_KEYS = {"label", "config"}
SEED_AXIS = "seed_everything"  # the one undotted fit option that is a grid axis
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its configs, overrides (fixed first, then axis values) and run dir."""

    sweep: str
    index: int
    label: str
    configs: tuple[str, ...]
    overrides: dict[str, Any]
    run_dir: Path
    values: dict[str, Any] = field(default_factory=dict)  # axis name -> this point's value (or label of a mapping)
    setting: str = ""  # the label without the seed axis: the points of one setting differ only in seed

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def fit_args(self, extra_args: list[str] | tuple[str, ...] = (), resume: bool | None = None) -> list[str]:
        """Arguments of ``ssl-norms fit`` for this point. ``resume=None`` adds ``--ckpt_path=last``
        when the run dir already holds ``last.ckpt``; ``extra_args`` go after the point's overrides."""
        args = ["fit"]
        for config in self.configs:
            args += ["--config", config]
        args += [f"--{key}={cli_value(value)}" for key, value in self.overrides.items()]
        args += list(extra_args)
        args.append(f"--run_dir={self.run_dir}")
        if resume is None:
            from ssl_norms.runs import holds_checkpoints  # torch and Lightning: not for `sweep --help`

            resume = holds_checkpoints(self.run_dir)
        if resume:
            args.append("--ckpt_path=last")
        return args

    def command(self, extra_args: list[str] | tuple[str, ...] = (), resume: bool | None = None) -> list[str]:
        """The exact ``ssl-norms fit ...`` command (argv) that runs this point."""
        return ["ssl-norms", *self.fit_args(extra_args, resume)]

    def describe(self) -> str:
        """``axis=value`` per axis, axis keys shortened to their last part."""
        return " ".join(f"{_short(axis)}={_format(value)}" for axis, value in self.values.items()) or self.label


def cli_value(value: Any) -> str:
    """An override value as jsonargparse reads it: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(key: str) -> str:
    return "seed" if key == SEED_AXIS else key.rstrip("+").rsplit(".", 1)[-1]


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "x"


def _explicit_label(text: str, where: str) -> str:
    """A ``label`` given in the sweep file, made safe as a run-dir name. Empty, dots-only and path
    labels are refused: they would put the run outside its own directory."""
    if not text.strip() or not _safe(text).strip(".") or "/" in text or "\\" in text:
        raise ValueError(f"{where}: label {text!r} must name one directory (not empty, '.', '..' or a path)")
    return _safe(text)


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{what} must be a config path or a list of them, got {value!r}")
    return values


class _Entry:
    """One value of an axis (or an explicit point): configs, overrides and its label."""

    def __init__(self, axis: str, value: Any, where: str) -> None:
        if isinstance(value, dict):
            self.configs = _as_list(value.get("config"), f"{where}: 'config'")
            self.overrides = {str(k): v for k, v in value.items() if k not in SPECIAL_KEYS}
            label = value.get("label")
            if label is not None:
                label = _explicit_label(str(label), where)
            else:
                scalars = [f"{_short(k)}={_format(v)}" for k, v in self.overrides.items() if not isinstance(v, (dict, list))]
                if len(scalars) != len(self.overrides):
                    raise ValueError(f"{where} sets a list or mapping override: give it a 'label' to name its run dir")
                label = "_".join(scalars) or "_".join(Path(c).stem for c in self.configs)
                if not label:
                    raise ValueError(f"{where} is empty: give it a 'label' (e.g. 'default')")
                label = _safe(label)
            self.label = label
            self.shown = self.label
        elif isinstance(value, list):
            raise ValueError(f"{where} is a list; an axis value must be a scalar or a mapping of overrides")
        else:
            if "." not in axis and axis != SEED_AXIS:
                raise ValueError(f"{where}: axis {axis!r} of plain values must be a dotted CLI key such as model.init_args.lr, or {SEED_AXIS}")
            self.configs, self.overrides = [], {axis: value}
            self.label = _safe(f"{_short(axis)}={_format(value)}")
            self.shown = value


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"sweep file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"sweep file {path} must be a mapping with name, config, fixed, grid and/or points")
    unknown = set(spec) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or _safe(name) != name or not name.strip("."):
        raise ValueError(f"sweep file {path} needs a 'name' of letters, digits, '.', '_', '=', '+' or '-', got {name!r}")
    return spec


def sweep_points(path: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> list[SweepPoint]:
    """The points of a sweep file, in a stable order: the grid (first axis slowest), then ``points``.

    Config paths are resolved relative to the sweep file; run dirs are
    ``<runs_root or $SSL_NORMS_RUNS or runs>/<name>/<label>``. Pure: reads only the sweep file.
    """
    path = Path(path)
    spec = _load(path)
    base_dir = path.parent
    from ssl_norms.runs import runs_root as default_runs_root  # torch and Lightning: not for `sweep --help`

    root = Path(runs_root) if runs_root else default_runs_root()
    base_configs = _as_list(spec.get("config"), f"sweep file {path}: 'config'")
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict) or SPECIAL_KEYS & set(fixed):
        raise ValueError(f"sweep file {path}: 'fixed' must be a mapping of CLI overrides (put configs under 'config')")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ValueError(f"sweep file {path}: 'grid' must map axis names to lists of values")
    axes: list[list[_Entry]] = []
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep file {path}: grid axis {axis!r} must be a non-empty list")
        axes.append([_Entry(str(axis), v, f"sweep file {path}: grid axis {axis!r} value {i}") for i, v in enumerate(values)])
    combos: list[tuple[dict[str, str], list[_Entry], list[_Entry]]] = []  # values, entries, entries but the seed
    explicit = spec.get("points") or []
    if not isinstance(explicit, list):
        raise ValueError(f"sweep file {path}: 'points' must be a list of override mappings")
    if axes or not explicit:  # no axes at all: the grid is the single base point
        for entries in itertools.product(*axes):
            setting = [e for a, e in zip(grid, entries) if a != SEED_AXIS]
            combos.append(({str(a): e.shown for a, e in zip(grid, entries)}, list(entries), setting))
    for i, value in enumerate(explicit):
        if not isinstance(value, dict):
            raise ValueError(f"sweep file {path}: points[{i}] must be a mapping of overrides")
        entry = _Entry("point", value, f"sweep file {path}: points[{i}]")
        combos.append(({"point": entry.label}, [entry], [entry]))

    points, seen = [], {}
    for index, (values, entries, setting) in enumerate(combos):
        label = "_".join(e.label for e in entries) or "base"
        if not label.strip("."):
            raise ValueError(f"sweep file {path}: point {index} has the run dir label {label!r}; give it a 'label'")
        if label in seen:
            raise ValueError(f"sweep file {path}: points {seen[label]} and {index} share the run dir label {label!r}; give them distinct labels")
        seen[label] = index
        configs = [*base_configs, *(c for e in entries for c in e.configs)]
        if not configs:
            raise ValueError(f"sweep file {path}: point {index} has no config; set a top-level 'config'")
        overrides = dict(fixed)
        for entry in entries:
            overrides.update(entry.overrides)
        points.append(SweepPoint(
            sweep=spec["name"], index=index, label=label,
            configs=tuple(os.path.normpath(base_dir / c) for c in configs),
            overrides=overrides, run_dir=root / spec["name"] / label, values=values,
            setting="_".join(e.label for e in setting) or "base",
        ))
    return points


def _parse_indices(words: list[str], count: int) -> list[int]:
    """``3``, ``0-3`` and ``1,5`` forms; every index must be in range and a range must not be empty."""
    indices: list[int] = []
    for word in ",".join(words).split(","):
        if not word:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", word.strip())
        if not match:
            raise ValueError(f"--index takes numbers, ranges such as 0-3 or lists such as 1,5; got {word!r}")
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"--index {word}: a range runs from low to high (e.g. {high}-{low})")
        indices += range(low, high + 1)
    if not indices:
        raise ValueError("--index names no point; give numbers, ranges such as 0-3 or lists such as 1,5")
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(f"--index {bad[0]} is out of range: the sweep has {count} points (0-{count - 1}); see --list")
    return indices


def summarise(points: Sequence[SweepPoint]) -> tuple[Path, Path]:
    """The results table of a sweep's points, one row per setting (its seeds together), printed and
    written next to the points' run dirs as ``summary.csv`` and ``summary.md``."""
    from ssl_norms.compare import summary_rows, write_summary

    settings: dict[str, list[Path]] = {}
    for point in points:
        settings.setdefault(point.setting, []).append(point.run_dir)
    return write_summary(summary_rows(list(settings.items())), points[0].run_dir.parent)


def run_point(point: SweepPoint, run_cli: Callable[[list[str]], None], extra_args: Sequence[str] = ()) -> None:
    """Run one point through ``run_cli`` (the ``ssl-norms`` entry point), resuming if possible."""
    for config in point.configs:
        if not Path(config).is_file():
            raise FileNotFoundError(f"sweep point {point.index} ({point.label}): config file {config} does not exist")
    from ssl_norms.runs import holds_checkpoints
    from ssl_norms.wandb_setup import SWEEP_ENV  # torch and Lightning: not for `sweep --help`

    resume = holds_checkpoints(point.run_dir)
    print(f"sweep {point.sweep} point {point.index} ({point.label}){' resuming' if resume else ''}: "
          f"{shlex.join(point.command(extra_args, resume))}", flush=True)
    os.environ[SWEEP_ENV] = point.sweep  # the point's W&B group, whatever its runs root
    try:
        run_cli(point.fit_args(extra_args, resume))
    finally:
        os.environ.pop(SWEEP_ENV, None)


def sweep(
    file: str,
    *,
    list_: bool = False,
    count: bool = False,
    index: list[str] | None = None,
    all_: bool = False,
    runs: str | None = None,
    dry_run: bool = False,
    summary: bool = False,
    fit_args: Sequence[str] = (),
    run_cli: Callable[[list[str]], None],
) -> None:
    """List or run the points of a sweep file (see configs/paper/README.md).

    Arguments after ``--`` are appended to every point's ``ssl-norms fit`` command (e.g. CPU-scale
    overrides). A single point that fails exits with the fit's own code; with several, the others
    still run and the command exits 1 naming the failed ones. ``--all`` ends with the results table
    of ``--summary``.

    Args:
        file: sweep YAML file
        list_: print index, values and the exact fit command of every point
        count: print the number of points (for --array=0-$((N-1)))
        index: run point(s) I: 3, 0-3 or 1,5 (e.g. $SLURM_ARRAY_TASK_ID)
        all_: run every point in order
        runs: runs root (default $SSL_NORMS_RUNS or ./runs); run dirs are RUNS/<name>/<label>
        dry_run: with --index/--all, print the commands instead of running them
        summary: print the results table (k-NN, norm; mean +- std over seeds) of the points run so far,
            written to RUNS/<name>/summary.csv and summary.md
        fit_args: arguments for every point's fit (the words after ``--``)
        run_cli: the ``ssl-norms`` entry point, which runs each point's fit
    """
    actions = [flag for flag, given in (("--list", list_), ("--count", count), ("--index", index is not None), ("--all", all_),
                                        ("--summary", summary)) if given]
    if len(actions) != 1:
        raise ValueError(f"give one of --list, --count, --index I, --all, --summary (got {' '.join(actions) or 'none'})")
    points = sweep_points(file, runs)
    if summary:
        summarise(points)
        return
    if count:
        print(len(points))
        return
    if list_:
        for point in points:
            print(f"{point.index}\t{point.describe()}\t{shlex.join(point.command(fit_args))}")
        return
    chosen = [points[i] for i in (range(len(points)) if all_ else _parse_indices(index, len(points)))]
    if dry_run:
        for point in chosen:
            print(shlex.join(point.command(fit_args)))
        return
    if len(chosen) == 1 and not all_:
        run_point(chosen[0], run_cli, fit_args)  # a failure exits with the fit's own code (SLURM sees it)
        return
    failed = []
    for point in chosen:  # a local loop: one diverging point does not stop the others
        try:
            run_point(point, run_cli, fit_args)
        except SystemExit as stop:
            if stop.code not in (0, None):
                failed.append(f"{point.index} ({point.label}, exit {stop.code})")
    if all_:
        summarise(points)
    if failed:
        print(f"ssl-norms sweep: {len(failed)} of {len(chosen)} points failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
