"""Where motte keeps its files on the host."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$MOTTE_CACHE_DIR``, else ``$XDG_CACHE_HOME/motte``, else ``~/.cache/motte``."""
    explicit = os.environ.get("MOTTE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "motte"


def module_cache_dir() -> Path:
    return cache_root() / "modules"
