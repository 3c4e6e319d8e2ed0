"""``ssl-norms simulate <name> [--out DIR] [--wandb] [--<setting> VALUE ...]``, ``simulate all`` and
``simulate --list``.

Runs one simulation of :data:`ssl_norms.simulations.SIMULATIONS` (or all of them with their
defaults), writes ``<out>/<name>.png``, ``.json`` and ``.csv`` (default ``$SSL_NORMS_RUNS/simulations``,
i.e. ``runs/simulations``), prints the paths and the simulation's summary. The settings are the
keyword arguments of the simulation function; lists are comma-separated (``--norms 0.5,1,2``) or
several words (``--norms 0.5 1 2``). With ``--wandb`` the PNGs and numbers are also logged into a
W&B run under ``<out>/wandb`` (offline without credentials or with WANDB_MODE=offline).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ssl_norms.command_line import Member, Subcommands, help_line
from ssl_norms.figures import WandbFigures
from ssl_norms.runs import runs_root
from ssl_norms.simulations import SIMULATIONS, simulation_output, simulation_params
from ssl_norms.simulations.settings import declared_settings


def simulate(name: str, *, out: Path | None = None, wandb: bool = False, **settings: Any) -> None:
    """Run simulation ``name`` (``all``: every one with its defaults); print its files and summary.

    Args:
        out: output directory (default $SSL_NORMS_RUNS/simulations, i.e. runs/simulations)
        wandb: also log the PNGs and numbers into a W&B run under <out>/wandb (offline without credentials)
    """
    out_dir = out or runs_root() / "simulations"
    figures = None  # the W&B run starts with the first output, so bad settings leave no run behind
    try:
        for simulation in SIMULATIONS if name == "all" else [name]:
            output = simulation_output(simulation, **settings)
            numbers = output.write(simulation, out_dir)
            paths = numbers["paths"]
            print(f"{simulation}: {', '.join(paths.values())} ({numbers.get('runtime_s', 0):.1f} s)")
            for line in output.summary:
                print(f"  {line}")
            if wandb:
                if figures is None:
                    figures = WandbFigures(out_dir, job_type="simulation", name=f"simulate-{name}")
                figures.log_figures(f"simulation/{simulation}", [Path(p) for p in paths.values()], numbers)
    finally:
        if figures is not None:
            figures.finish()


def list_simulations(*, list_: bool = False) -> None:
    """Without a simulation name: ``--list`` prints every simulation and its settings with defaults.

    Args:
        list_: list the simulations and their settings with defaults and accepted ranges
    """
    if not list_:
        raise ValueError(f"name a simulation: {', '.join(SIMULATIONS)} or all (ssl-norms simulate --list shows their settings)")
    for name, function in SIMULATIONS.items():
        print(f"{name}: {help_line(function)}")
        declared = declared_settings(function)
        for key, default in simulation_params(name).items():
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, (list, tuple)) else default
            print(f"    --{key} {shown}" + (f"  ({declared[key].range})" if key in declared else ""))


COMMAND = Subcommands(
    {
        **{name: Member(functools.partial(simulate, name=name), (function,)) for name, function in SIMULATIONS.items()},
        "all": Member(functools.partial(simulate, name="all"), help="every simulation with its default settings"),
    },
    default=list_simulations,
)
