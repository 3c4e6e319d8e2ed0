"""Small, backend-free plotting and output helpers shared by the simulations.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot global state),
so the simulations work headless and never open windows.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure


@dataclass
class SimulationOutput:
    """What a simulation function returns; :func:`ssl_norms.simulations.run_simulation` writes it.

    ``tables`` maps a suffix to CSV rows: ``""`` -> ``<name>.csv``, ``"x"`` -> ``<name>_x.csv``.
    """

    numbers: dict
    figure: Figure
    tables: dict[str, list[dict]] = field(default_factory=dict)


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 5.0, height: float = 4.0, **kwargs):
    """A ``Figure`` with a grid of axes (``axes`` is always a flat list)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, [ax for row in axes for ax in row]


def save_png(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy / torch scalars and arrays to plain Python; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "detach"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(data: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    return path


def write_csv(rows: Sequence[dict], path: str | Path, columns: Iterable[str] | None = None) -> Path:
    """Write a list of flat dicts as CSV (columns default to the keys of the first row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [to_jsonable(r) for r in rows]
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return path
