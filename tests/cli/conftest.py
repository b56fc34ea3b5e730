from __future__ import annotations

import pytest

from motte.host.paths import cache_root

#: Read at import time, before the autouse fixture swaps in a private cache directory.
DEFAULT_CACHE = str(cache_root())


def _backends() -> list[object]:
    params: list[object] = ["nil"]
    try:
        from motte.host.platform import kvm_usable  # type: ignore[attr-defined]
    except ImportError:
        return params
    usable, reason = kvm_usable()
    params.append(pytest.param("kvm", marks=[pytest.mark.vm] + ([] if usable else [pytest.mark.skip(reason=reason)])))
    return params


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "kvm":
        # The keep kernel (a 34 MB download) and image stay cached across runs, as in tests/host;
        # a kvm keep never uses the host's module cache, so nothing else is shared.
        monkeypatch.setenv("MOTTE_CACHE_DIR", DEFAULT_CACHE)
    return str(request.param)
