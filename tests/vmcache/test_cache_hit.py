"""A module found compiled in the cache is loaded without its wasm bytes ever being fetched."""

from __future__ import annotations

import hashlib
from pathlib import Path

from motte.keep.engine import ModuleCache, make_engine
from tests.vmcache.test_sealing import MEMORY, DictStore


def test_the_wasm_is_fetched_only_on_a_miss(wasm: object) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()  # type: ignore[operator]
    digest = hashlib.sha256(module).hexdigest()
    fetches: list[int] = []

    def fetch() -> bytes:
        fetches.append(1)
        return module

    cache = ModuleCache(DictStore())
    assert not cache.load(engine, fetch, digest).from_cache and len(fetches) == 1
    assert cache.load(engine, fetch, digest).from_cache and len(fetches) == 1
    assert not ModuleCache(None).load(engine, fetch, digest).from_cache and len(fetches) == 2
