"""Where ssl-norms keeps what it can recompute (decoded images, probe features, the CLI's help):
light, so the entry point can find it without importing torch."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SSL_NORMS_CACHE"


def cache_root() -> Path:
    """``$SSL_NORMS_CACHE``, else ``~/.cache/ssl-norms``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ssl-norms")
