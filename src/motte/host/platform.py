"""What this host can run: each backend, and every check that decides it, with its result.

Each backend decides its own checks (:class:`motte.host.backends.base.BackendChecks`); this module
collects them, with the facts about the host and its keep image. The probes only read (``/proc``,
``/sys``, device nodes, one ``ioctl``, ``qemu --version``); the one exception, a probe boot under
KVM, runs only when asked (``probe=True``) and its verdict is cached. Everything is plain
dataclasses, so ``motte platform info`` can print a table or JSON and tests can check the structure.
"""

from __future__ import annotations

import dataclasses
import os
import platform as stdlib_platform
from dataclasses import dataclass, field
from typing import Any

from motte.host.backends.base import BackendChecks, BackendReport
from motte.host.backends.facts import cpu_flags, cpu_model, module_param, read_text


@dataclass(frozen=True)
class PlatformReport:
    host: dict[str, Any]
    backends: list[BackendReport]
    image: dict[str, Any]
    strongest: str
    notes: list[str] = field(default_factory=list)

    def backend(self, name: str) -> BackendReport:
        return next(b for b in self.backends if b.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "backends": {
                b.name: {
                    "supported": b.supported,
                    "summary": b.summary,
                    "checks": [dataclasses.asdict(c) for c in b.checks],
                }
                for b in self.backends
            },
            "image": self.image,
            "strongest": self.strongest,
            "notes": self.notes,
        }


def host_facts() -> dict[str, Any]:
    cpuinfo = read_text("/proc/cpuinfo") or ""
    return {
        "kernel": stdlib_platform.release(),
        "machine": stdlib_platform.machine(),
        "cpu": cpu_model(cpuinfo),
        "cmdline": read_text("/proc/cmdline") or "",
        "virtualisation_flags": sorted(
            cpu_flags(cpuinfo)
            & {
                "svm",
                "vmx",
                "sev",
                "sev_es",
                "sev_snp",
                "tdx_guest",
                "tdx_host_platform",
                "sgx",
                "sgx_lc",
                "hypervisor",
            }
        ),
        "kernel_parameters": {
            f"{module}.{param}": value
            for module, param in (
                ("kvm_amd", "sev"),
                ("kvm_amd", "sev_es"),
                ("kvm_amd", "sev_snp"),
                ("kvm_intel", "tdx"),
                ("kvm_intel", "sgx"),
            )
            if (value := module_param(module, param)) is not None
        },
    }


CONFIDENTIAL = ("snp", "tdx")
NO_CONFIDENTIAL_KEEP = (
    "no keep on this host protects a workload from the host: 'motte run' hands the host the workload, "
    "its config and its output, and 'motte deploy' sends them only to a keep it verified first, but a "
    "nil or kvm keep offers no evidence and its host can read its memory (docs/threat-model.md)"
)

KVM_MODULE_CACHE = (
    "a kvm keep keeps its compiled modules in the host's cache (<cache>/modules/kvm/) and runs what it "
    "loads from there: native code this host can change, as it can change the keep's memory; an snp keep "
    "seals what it stores there, a tdx keep compiles every time, and a deployed workload is never cached "
    "(docs/vm-keep.md)"
)


def all_backends() -> list[BackendChecks]:
    """Every kind of keep, in the order ``motte platform info`` lists them."""
    from motte.host.backends.confidential import SnpChecks, TdxChecks
    from motte.host.backends.kvm import KvmBackend
    from motte.host.backends.nil import NilBackend
    from motte.host.backends.sgx import SgxChecks

    return [NilBackend(), KvmBackend(), SnpChecks(), TdxChecks(), SgxChecks()]


def platform_report(*, probe: bool = False) -> PlatformReport:
    backends = [backend.report(probe=probe) for backend in all_backends()]
    image = _image_facts()
    notes = [note for backend in backends for note in backend.notes]
    if any(report.supported and report.name == "kvm" for report in backends):
        notes.append(KVM_MODULE_CACHE)
    if not any(report.supported and report.name in CONFIDENTIAL for report in backends):
        notes.append(NO_CONFIDENTIAL_KEEP)
    return PlatformReport(host_facts(), backends, image, _strongest(backends, image), notes)


def _image_facts() -> dict[str, Any]:
    from motte.host.image import build, kernel

    facts: dict[str, Any] = {"kernel_package": f"{kernel.PIN.package}={kernel.PIN.version}"}
    try:
        image = build.cached_image()
    except Exception as exc:
        return {**facts, "present": False, "error": str(exc)}
    if image is None:
        return {**facts, "present": False}
    return {
        **facts,
        "present": True,
        "directory": str(image.directory),
        "key": image.key,
        "initrd_sha256": image.manifest["initrd"]["sha256"],
        "vmlinux_sha256": image.kernel.vmlinux_sha256,
        "size": image.manifest["initrd"]["size"],
    }


def _strongest(backends: list[BackendReport], image: dict[str, Any]) -> str:
    kvm = next(b for b in backends if b.name == "kvm")
    return "kvm" if kvm.supported and image.get("present") else "nil"


def strongest_backend() -> str:
    """The backend ``motte run`` uses by default: the strongest isolation this host can run.

    ``kvm`` (a micro-VM: the workload cannot reach the host) whenever QEMU is installed, building
    the keep image on first use; ``nil`` (no isolation) only where no VM can run. Cheap: no probe
    boot, no image build here. (snp/tdx join when their launch paths can run.)"""
    from motte.host.backends.kvm.qemu import qemu_path

    return "nil" if qemu_path() is None else "kvm"


def kvm_usable() -> tuple[bool, str]:
    """Whether ``motte run --backend kvm`` can run on this host, and why (not): QEMU is installed and
    the keep kernel and image are cached or can be made here. Cheap: no boot, no download, no build
    (the tests ask it at collection time)."""
    import shutil

    from motte.host.backends.kvm.qemu import QEMU, QEMU_HINT, qemu_path
    from motte.host.image import build, inputs, kernel
    from motte.shared.errors import MotteError

    if qemu_path() is None:
        return False, f"{QEMU} is not installed ({QEMU_HINT})"
    try:
        image = build.cached_image()
    except Exception as exc:  # a checkout whose image key cannot be computed cannot build one either
        return False, f"cannot compute the keep image key: {exc}"
    if image is not None:
        return True, f"QEMU and the keep image {image.key[:12]}"
    missing = []
    try:
        inputs.busybox_path()
    except MotteError:
        missing.append("busybox")
    try:
        inputs.ca_bundle_path()
    except MotteError:
        missing.append(f"the {inputs.CA_BUNDLE_PACKAGE} package (the image's CA bundle)")
    if kernel.cached_kernel() is None:
        if shutil.which("apt-get") is None and not os.environ.get("MOTTE_KERNEL_DEB"):
            return False, "no keep kernel cached, and no apt-get to download it (or set MOTTE_KERNEL_DEB)"
        missing += [tool for tool in ("dpkg-deb", "zstd") if shutil.which(tool) is None]
    if missing:
        return False, f"building the keep image needs {', '.join(missing)} (dev/setup installs them)"
    return True, "QEMU present; the keep kernel and image are made on first use"
