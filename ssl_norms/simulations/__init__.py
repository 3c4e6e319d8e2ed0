"""Simulations reproducing the paper's Section 3-4 toy experiments (Fig. 2a-c) and theory checks.

Usage::

    from ssl_norms.simulations import run_simulation
    numbers = run_simulation("fig2a", "out/", norms=[0.5, 1, 2], max_steps=5000)

Every simulation is registered once, in :data:`SIMULATIONS`: a function whose keyword arguments are
its settings (``ssl-norms simulate <name> --help`` shows them), each number annotated with its
accepted range (:mod:`ssl_norms.simulations.settings`), whose docstring's first line says what it
reproduces, and which returns a :class:`SimulationOutput`. :func:`simulation_output` checks the
settings and runs it. ``run_simulation`` writes
``<out_dir>/<name>.png`` (the figure), ``<out_dir>/<name>.json`` (the numbers behind it) and
``<out_dir>/<name>.csv`` (tabular data), and returns the numbers with a ``"paths"`` entry.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from ssl_norms.simulations.aparametric import fig2a
from ssl_norms.simulations.output import SimulationOutput
from ssl_norms.simulations.parametric import fig2b, fig2c
from ssl_norms.simulations.settings import check_settings
from ssl_norms.simulations.theory import theory_checks

SIMULATIONS: dict[str, Callable[..., SimulationOutput]] = {
    "fig2a": fig2a,
    "theory_checks": theory_checks,
    "fig2b": fig2b,
    "fig2c": fig2c,
}

__all__ = ["SIMULATIONS", "SimulationOutput", "run_simulation", "simulation_output", "simulation_params"]


def simulation_params(name: str) -> dict[str, Any]:
    """The settings of simulation ``name`` and their defaults."""
    if name not in SIMULATIONS:
        raise ValueError(f"unknown simulation {name!r}; valid names: {', '.join(SIMULATIONS)}")
    parameters = inspect.signature(SIMULATIONS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def simulation_output(name: str, **settings: Any) -> SimulationOutput:
    """Run simulation ``name`` with ``settings`` after checking every setting's name and range
    (``ValueError`` naming the first bad one)."""
    unknown = sorted(set(settings) - set(simulation_params(name)))
    if unknown:
        raise ValueError(f"unknown setting(s) for {name}: {', '.join(unknown)}; valid: {', '.join(simulation_params(name))}")
    check_settings(name, SIMULATIONS[name], settings)
    return SIMULATIONS[name](**settings)


def run_simulation(name: str, out_dir: str | Path, **settings: Any) -> dict:
    """Run simulation ``name`` with ``settings``, write ``<name>.png/.json/.csv`` into ``out_dir``,
    return the numbers."""
    return simulation_output(name, **settings).write(name, out_dir)
