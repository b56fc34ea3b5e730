"""The kernel and image caches: where the images live, and the build lock (``cache_root`` lives in
:mod:`motte.host.paths`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from motte.host.paths import cache_root

__all__ = ["cache_root", "images_root", "locked"]


def images_root() -> Path:
    return cache_root() / "image"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` body.

    Two processes (parallel test workers, two ``motte run``) that need the same kernel or image
    then build it once: the second waits and finds it in the cache.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
