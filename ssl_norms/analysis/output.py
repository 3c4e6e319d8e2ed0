"""What an analysis returns. Its figure and files are written with :mod:`ssl_norms.figures`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class AnalysisUnavailable(ValueError):
    """An analysis that cannot run on this data (a missing label file, an unknown image order).
    ``ssl-norms analyze all`` notes it and goes on; a single analysis reports it as its error."""


@dataclass
class AnalysisResult:
    """Paths an analysis wrote and the headline numbers it printed."""

    name: str
    numbers: dict[str, Any]
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def png(self) -> Path | None:
        return next((p for p in self.paths if p.suffix == ".png"), None)
