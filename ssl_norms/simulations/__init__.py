"""Simulations reproducing the paper's Section 3-4 toy experiments (Fig. 2a-c) and theory checks.

Usage::

    from ssl_norms.simulations import run_simulation
    numbers = run_simulation("fig2a", "out/", norms=[0.5, 1, 2], max_steps=5000)

``run_simulation`` writes ``<out_dir>/<name>.png`` (the figure), ``<out_dir>/<name>.json`` (the
numbers behind it) and ``<out_dir>/<name>.csv`` (tabular data), and returns the numbers with a
``"paths"`` entry. Overrides are the keyword arguments of the simulation function (see
:func:`simulation_params`); strings are coerced to the type of the default, lists may be given
as comma-separated strings.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from ssl_norms.simulations.aparametric import fig2a, theory_checks
from ssl_norms.simulations.parametric import fig2b, fig2c
from ssl_norms.simulations.plotting import SimulationOutput, plain, save_figure, write_csv, write_json

SIMULATIONS: dict[str, Callable[..., SimulationOutput]] = {
    "fig2a": fig2a,
    "theory_checks": theory_checks,
    "fig2b": fig2b,
    "fig2c": fig2c,
}

__all__ = ["SIMULATIONS", "run_simulation", "simulation_params", "SimulationOutput"]


def _get(name: str) -> Callable[..., SimulationOutput]:
    try:
        return SIMULATIONS[name]
    except KeyError:
        raise ValueError(f"unknown simulation {name!r}; valid names: {', '.join(SIMULATIONS)}") from None


def simulation_params(name: str) -> dict[str, Any]:
    """Override names of simulation ``name`` and their defaults."""
    sig = inspect.signature(_get(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def _coerce(value: Any, default: Any, key: str) -> Any:
    """``value`` (a string from the command line, or a Python value) as the type of ``default``."""
    if isinstance(default, (list, tuple)):
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            value = [value]
        elem = type(default[0]) if len(default) else float
        return [_coerce(v, elem(), key) for v in value]
    if isinstance(value, (list, tuple)):
        raise ValueError(f"override {key}: expected one value, got {len(value)} ({', '.join(map(str, value))})")
    kind = "a boolean" if isinstance(default, bool) else "an integer" if isinstance(default, int) else "a number" if isinstance(default, float) else None
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                low = value.lower()
                if low not in {"true", "false", "1", "0", "yes", "no"}:
                    raise ValueError
                return low in {"true", "1", "yes"}
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"override {key}={value!r}: expected {kind}") from None
    return value


def run_simulation(name: str, out_dir: str | Path, **overrides: Any) -> dict:
    """Run simulation ``name``, write ``<name>.png/.json/.csv`` into ``out_dir``, return the numbers."""
    fn = _get(name)
    params = simulation_params(name)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"unknown override(s) for {name}: {', '.join(unknown)}; valid: {', '.join(params)}")
    kwargs = {k: _coerce(v, params[k], k) for k, v in overrides.items()}
    out = fn(**kwargs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": str(save_figure(out.figure, out_dir / f"{name}.png"))}
    for suffix, rows in out.tables.items():
        fname = f"{name}.csv" if suffix == "" else f"{name}_{suffix}.csv"
        paths["csv" if suffix == "" else f"csv_{suffix}"] = str(write_csv(rows, out_dir / fname))
    paths["json"] = str(out_dir / f"{name}.json")
    numbers = plain({"simulation": name, **out.numbers, "paths": paths})
    write_json(numbers, out_dir / f"{name}.json")
    return numbers
