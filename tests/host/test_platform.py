"""``motte platform info``: every backend and every check, as a table and as JSON."""

from __future__ import annotations

import json

import pytest

from motte.host import platform
from motte.host.backends import facts
from motte.host.backends.kvm import KvmBackend, accel, qemu
from tests.conftest import motte

EXPECTED_CHECKS = {
    "nil": {"wasmtime", "isolation"},
    "kvm": {"QEMU", "/dev/kvm", "kvm_pvm", "KVM boots a guest", "accelerator", "keep kernel", "keep image"},
    "snp": {"cpu flag sev_snp", "/dev/sev", "kvm_amd sev_snp", "host kernel", "QEMU version", "/dev/sev-guest"},
    "tdx": {"cpu flag tdx_host_platform", "kvm_intel tdx", "host kernel", "QEMU version", "/dev/tdx_guest"},
    "sgx": {"cpu flag sgx", "cpu flag sgx_lc", "/dev/sgx_enclave", "/dev/sgx_provision", "library OS"},
}


def test_json_has_every_backend_and_check() -> None:
    result = motte("platform", "info", "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert sorted(report["backends"]) == sorted(["nil", "kvm", "snp", "tdx", "sgx"])
    for name, checks in EXPECTED_CHECKS.items():
        backend = report["backends"][name]
        assert isinstance(backend["supported"], bool) and backend["summary"]
        names = {c["name"] for c in backend["checks"]}
        assert checks <= names, (name, checks - names)
        for check in backend["checks"]:
            assert set(check) == {"name", "ok", "detail", "required"} and check["detail"]
    assert report["backends"]["nil"]["supported"] is True
    assert report["backends"]["sgx"]["supported"] is False  # design only
    assert report["strongest"] in ("nil", "kvm")
    host = report["host"]
    assert {"kernel", "cpu", "cmdline", "virtualisation_flags", "kernel_parameters"} <= set(host)
    assert set(report["image"]) >= {"present", "kernel_package"}


def test_kvm_checks_on_this_host() -> None:
    report = KvmBackend().report()
    checks = {c.name: c for c in report.checks}
    assert report.supported == (qemu.qemu_path() is not None)
    if checks["/dev/kvm"].ok and "KVM API version" in checks:
        api, _types, error = accel.kvm_api()
        assert (api == 12) == checks["KVM API version"].ok, error
    if accel.is_pvm():
        assert not checks["kvm_pvm"].ok and not checks["KVM boots a guest"].ok
        assert "TCG" in checks["accelerator"].detail and "TCG" in report.summary


def test_table_output() -> None:
    result = motte("platform", "info", env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    for name in ("nil", "kvm", "snp", "tdx", "sgx", "QEMU version", "/dev/sgx_enclave", "default backend"):
        assert name in text


def test_fact_parsers() -> None:
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: fpu sse4_1 svm sev sev_es sev_snp\n"
    assert facts.cpu_flags(cpuinfo) == {"fpu", "sse4_1", "svm", "sev", "sev_es", "sev_snp"}
    assert facts.cpu_model(cpuinfo) == "AMD EPYC 9654"
    assert facts.kernel_version("6.1.0-50-cloud-amd64") == (6, 1, 0)
    assert facts.kernel_version("6.18.44-fc-v769") == (6, 18, 44)
    assert facts.kernel_version("6.16") == (6, 16, 0)
    assert accel.host_tsc_khz("cpu MHz\t\t: 2599.998\nflags\t\t: fpu constant_tsc\n") == 2599998
    assert accel.host_tsc_khz("cpu MHz\t\t: 800.000\nflags\t\t: fpu\n") is None  # scaling: not the TSC


def test_strongest_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu, "qemu_path", lambda: None)
    assert platform.strongest_backend() == "nil"
    # With QEMU, the VM keep is the default even before its image is built (built on first use).
    monkeypatch.setattr(qemu, "qemu_path", lambda: "/usr/bin/qemu-system-x86_64")
    assert platform.strongest_backend() == "kvm"
