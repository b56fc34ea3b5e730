"""``motte platform info`` says what a kvm keep's module cache means: the host can change its code."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from motte.host import platform
from motte.host.backends.base import BackendReport


@dataclass
class _Backend:
    name: str
    supported: bool

    def report(self, probe: bool = False) -> BackendReport:
        return BackendReport(self.name, self.supported, "", [])


@pytest.mark.parametrize("kvm_supported", [True, False])
def test_the_kvm_module_cache_note(monkeypatch: pytest.MonkeyPatch, kvm_supported: bool) -> None:
    monkeypatch.setattr(platform, "all_backends", lambda: [_Backend("nil", True), _Backend("kvm", kvm_supported)])
    monkeypatch.setattr(platform, "_image_facts", lambda: {"present": False})
    notes = platform.platform_report().notes
    assert (platform.KVM_MODULE_CACHE in notes) is kvm_supported
    assert "native code this host can change" in platform.KVM_MODULE_CACHE
