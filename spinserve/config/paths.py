"""Where spinserve keeps what it makes once and reuses: models, converted weights, kernels."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "SPINSERVE_CACHE"


def resolve_cache_dir(flag: str | None = None) -> Path:
    """The cache root: the flag, else $SPINSERVE_CACHE, else ~/.cache/spinserve."""
    chosen = flag or os.environ.get(CACHE_ENV_VAR)
    if chosen:
        return Path(chosen).expanduser()
    return Path.home() / ".cache" / "spinserve"
