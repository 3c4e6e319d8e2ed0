"""What a simulation returns. Figures and files are made with the helpers every analysis uses
(:mod:`ssl_norms.analysis.output`: ``new_figure``, ``save_figure``, ``write_csv``, ``write_json``),
so there is one way to build a headless figure and write numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure

from ssl_norms.analysis.output import new_figure, plain, save_figure, write_csv, write_json

__all__ = ["SimulationOutput", "new_figure", "plain", "save_figure", "write_csv", "write_json"]


@dataclass
class SimulationOutput:
    """What a simulation function returns; :func:`ssl_norms.simulations.run_simulation` writes it.

    ``tables`` maps a suffix to CSV rows: ``""`` -> ``<name>.csv``, ``"x"`` -> ``<name>_x.csv``.
    """

    numbers: dict
    figure: Figure
    tables: dict[str, list[dict]] = field(default_factory=dict)
