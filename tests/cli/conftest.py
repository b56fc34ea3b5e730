"""Every test that takes a ``backend`` runs on each backend this host can run (one suite for all)."""

from __future__ import annotations

import pytest

from motte.host.platform import kvm_usable


def _backends() -> list[object]:
    usable, reason = kvm_usable()
    kvm_marks = [pytest.mark.vm] + ([] if usable else [pytest.mark.skip(reason=f"kvm backend unavailable: {reason}")])
    return ["nil", pytest.param("kvm", marks=kvm_marks)]


@pytest.fixture(params=_backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
