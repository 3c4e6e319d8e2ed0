"""What a simulation returns, and how it is written: ``<name>.png``, ``<name>.json``, ``<name>.csv``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ssl_norms.figures import plain, save_figure, write_csv, write_json

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn, not for `simulate --help`
    from matplotlib.figure import Figure


@dataclass
class SimulationOutput:
    """What a simulation function returns.

    ``tables`` maps a suffix to CSV rows: ``""`` -> ``<name>.csv``, ``"x"`` -> ``<name>_x.csv``;
    ``summary`` holds the few lines worth printing (every number is in the JSON)."""

    numbers: dict
    figure: Figure
    tables: dict[str, list[dict]] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def write(self, name: str, out_dir: str | Path) -> dict:
        """``<out_dir>/<name>.png``, the CSV tables and ``<name>.json``; returns the JSON's content
        (the numbers, the simulation's name and a ``paths`` entry)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"png": str(save_figure(self.figure, out_dir / f"{name}.png"))}
        for suffix, rows in self.tables.items():
            file_name = f"{name}.csv" if suffix == "" else f"{name}_{suffix}.csv"
            paths["csv" if suffix == "" else f"csv_{suffix}"] = str(write_csv(rows, out_dir / file_name))
        paths["json"] = str(out_dir / f"{name}.json")
        numbers = plain({"simulation": name, **self.numbers, "paths": paths})
        write_json(numbers, out_dir / f"{name}.json")
        return numbers
