from __future__ import annotations

import pytest


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
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
