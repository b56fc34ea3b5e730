"""What this host can run: each backend, and every check that decides it, with its result.

The probes only read (``/proc``, ``/sys``, device nodes, one ``ioctl``, ``qemu --version``); the
one exception, a probe boot under KVM, runs only when asked (``probe=True``) and its verdict is
cached. Each function returns plain dataclasses, so ``motte platform info`` can print a table or
JSON and tests can check the structure.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.util
import os
import platform as stdlib_platform
import re
from dataclasses import dataclass, field
from typing import Any

from motte.host.backends import confidential
from motte.host.backends.confidential import Check

BACKENDS = ("nil", "kvm", "snp", "tdx", "sgx")
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_CHECK_EXTENSION = 0xAE03  # _IO(KVMIO, 0x03)
KVM_CAP_VM_TYPES = 235
KVM_API_VERSION = 12  # the only version there has ever been


@dataclass(frozen=True)
class BackendReport:
    name: str
    supported: bool
    summary: str
    checks: list[Check]


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


# ---- raw facts ------------------------------------------------------------------------------


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = cpuinfo if cpuinfo is not None else read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    text = cpuinfo if cpuinfo is not None else read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def kernel_version(release: str | None = None) -> tuple[int, ...]:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release or stdlib_platform.release())
    return tuple(int(g) for g in match.groups(default="0")) if match else (0, 0, 0)


def module_param(module: str, param: str) -> str | None:
    return read_text(f"/sys/module/{module}/parameters/{param}")


def kvm_api() -> tuple[int | None, int | None, str]:
    """``(api_version, vm_types, error)`` from ``KVM_GET_API_VERSION`` / ``KVM_CHECK_EXTENSION``."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return None, None, f"cannot open /dev/kvm: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION, 0)
        try:
            vm_types = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_VM_TYPES)
        except OSError:
            vm_types = None
        return version, vm_types, ""
    except OSError as exc:
        return None, None, f"KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)


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


# ---- per backend ----------------------------------------------------------------------------


def _exists(path: str) -> bool:
    return os.path.exists(path)


def nil_report() -> BackendReport:
    wasmtime = importlib.util.find_spec("wasmtime") is not None
    checks = [
        Check("wasmtime", wasmtime, "importable" if wasmtime else "not installed: pip install wasmtime"),
        Check("isolation", True, "none: the keep is a child process of the host (development only)", False),
    ]
    return BackendReport("nil", wasmtime, "yes: no isolation" if wasmtime else "no: wasmtime missing", checks)


def kvm_report(*, probe: bool = False) -> BackendReport:
    from motte.host.backends import kvm

    checks: list[Check] = []
    qemu = kvm.qemu_path()
    version = kvm.qemu_version(qemu) if qemu else None
    checks.append(Check("QEMU", qemu is not None,
                        f"{qemu} {'.'.join(map(str, version or ()))}" if qemu else
                        f"{kvm.QEMU} not found: {kvm.QEMU_HINT}"))  # fmt: skip
    dev_kvm = _exists("/dev/kvm")
    checks.append(Check("/dev/kvm", dev_kvm, "present" if dev_kvm else "missing (KVM not available here)", False))
    if dev_kvm:
        api, vm_types, error = kvm_api()
        api_ok = api == KVM_API_VERSION
        detail = error or f"KVM API {api}" + (f", VM types {vm_types:#x}" if vm_types is not None else "")
        checks.append(Check("KVM API version", api_ok, detail, False))
    pvm = kvm.is_pvm()
    checks.append(Check("kvm_pvm", not pvm,
                        "loaded: /dev/kvm is PVM, a paravirtual KVM that emulates guest ring 0" if pvm
                        else "not loaded", False))  # fmt: skip
    verdict = kvm.kvm_verdict(probe=probe, allow_boot=probe)
    if verdict.usable is None:
        guest_detail = "not probed yet (run 'motte platform info --probe')"
    else:
        guest_detail = ("probe boot: " if verdict.probed else "") + verdict.reason
    checks.append(Check("KVM boots a guest", bool(verdict.usable), guest_detail, False))
    accel = "kvm" if verdict.usable else "tcg"
    checks.append(
        Check(
            "accelerator",
            qemu is not None,
            "KVM" if accel == "kvm" else "TCG (software emulation, -cpu max): 15-30x slower",
            False,
        )
    )
    checks.extend(_image_checks())
    supported = qemu is not None
    if not supported:
        summary = f"no: {kvm.QEMU} is missing"
    else:
        summary = f"yes ({'KVM' if accel == 'kvm' else 'TCG'}): a micro-VM; the host can read its memory"
    return BackendReport("kvm", supported, summary, checks)


def _image_checks() -> list[Check]:
    from motte.host.image import build, kernel

    cached_kernel = kernel.cached_kernel()
    checks = [
        Check("keep kernel", cached_kernel is not None,
              f"{kernel.PIN.package} {kernel.PIN.version}" + ("" if cached_kernel else
              ": not downloaded yet (fetched by apt on first use)"), False),
    ]  # fmt: skip
    try:
        image = build.cached_image()
    except Exception as exc:  # a broken checkout must not break 'platform info'
        checks.append(Check("keep image", False, f"cannot compute the image key: {exc}", False))
        return checks
    if image is None:
        checks.append(Check("keep image", False, "not built for the current sources ('motte image build')", False))
    else:
        checks.append(Check("keep image", True, f"{image.directory} initrd sha256 "
                            f"{image.manifest['initrd']['sha256'][:16]}...", False))  # fmt: skip
    return checks


def snp_report() -> BackendReport:
    from motte.host.backends import kvm

    checks = confidential.snp_checks(
        qemu_version=kvm.qemu_version(),
        host_kernel=kernel_version(),
        cpu_flags=cpu_flags(),
        dev_sev=_exists("/dev/sev"),
        kvm_amd_sev_snp=module_param("kvm_amd", "sev_snp"),
    )
    guest = _exists("/dev/sev-guest")
    checks.append(Check("/dev/sev-guest", guest,
                        "present: this machine is itself an SEV-SNP guest" if guest else
                        "absent: this machine is not an SEV-SNP guest", False))  # fmt: skip
    return _confidential_report("snp", checks, "not implemented yet: launch command lines and checks only")


def tdx_report() -> BackendReport:
    from motte.host.backends import kvm

    checks = confidential.tdx_checks(
        qemu_version=kvm.qemu_version(),
        host_kernel=kernel_version(),
        cpu_flags=cpu_flags(),
        kvm_intel_tdx=module_param("kvm_intel", "tdx"),
    )
    guest = _exists("/dev/tdx_guest")
    checks.append(Check("/dev/tdx_guest", guest,
                        "present: this machine is itself a TDX guest" if guest else
                        "absent: this machine is not a TDX guest", False))  # fmt: skip
    return _confidential_report("tdx", checks, "not implemented yet: launch command lines and checks only")


def _confidential_report(name: str, checks: list[Check], not_yet: str) -> BackendReport:
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        return BackendReport(name, False, "no: " + "; ".join(c.name for c in failed), checks)
    # Every host requirement holds, but the launcher is not written: say so rather than "yes".
    return BackendReport(name, False, f"host ready; {not_yet}", checks)


def sgx_report() -> BackendReport:
    flags = cpu_flags()
    checks = [
        Check("cpu flag sgx", "sgx" in flags, "present" if "sgx" in flags else "absent from /proc/cpuinfo"),
        Check("cpu flag sgx_lc", "sgx_lc" in flags,
              "present (flexible launch control)" if "sgx_lc" in flags else "absent: no flexible launch control"),
        Check("/dev/sgx_enclave", _exists("/dev/sgx_enclave"),
              "present" if _exists("/dev/sgx_enclave") else "missing (no in-kernel SGX driver or no SGX)"),
        Check("/dev/sgx_provision", _exists("/dev/sgx_provision"),
              "present" if _exists("/dev/sgx_provision") else "missing", False),
        Check("library OS", False, "design only: an SGX keep needs a library OS (e.g. Gramine) to host "
              "Python; motte does not ship one"),
    ]  # fmt: skip
    failed = [c.name for c in checks if c.required and not c.ok]
    return BackendReport("sgx", False, "no: " + "; ".join(failed), checks)


def platform_report(*, probe: bool = False) -> PlatformReport:
    backends = [nil_report(), kvm_report(probe=probe), snp_report(), tdx_report(), sgx_report()]
    image = _image_facts()
    notes = []
    if kvm_is_pvm():
        notes.append("/dev/kvm here is PVM (kvm_pvm): kvm keeps run under TCG, 15-30x slower than native")
    return PlatformReport(host_facts(), backends, image, _strongest(backends, image), notes)


def kvm_is_pvm() -> bool:
    from motte.host.backends import kvm

    return kvm.is_pvm()


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
    from motte.host.backends import kvm

    return "nil" if kvm.qemu_path() is None else "kvm"


def kvm_usable() -> tuple[bool, str]:
    """Whether ``motte run --backend kvm`` can run on this host, and why (not): QEMU is installed and
    the keep kernel and image are cached or can be made here. Cheap: no boot, no download, no build
    (the tests ask it at collection time)."""
    import shutil

    from motte.host.backends import kvm
    from motte.host.image import build, kernel
    from motte.shared.errors import MotteError

    if kvm.qemu_path() is None:
        return False, f"{kvm.QEMU} is not installed ({kvm.QEMU_HINT})"
    try:
        image = build.cached_image()
    except Exception as exc:  # a checkout whose image key cannot be computed cannot build one either
        return False, f"cannot compute the keep image key: {exc}"
    if image is not None:
        return True, f"QEMU and the keep image {image.key[:12]}"
    missing = []
    try:
        build._busybox_path()
    except MotteError:
        missing.append("busybox")
    try:
        build.ca_bundle_path()
    except MotteError:
        missing.append(f"the {build.CA_BUNDLE_PACKAGE} package (the image's CA bundle)")
    if kernel.cached_kernel() is None:
        if shutil.which("apt-get") is None and not os.environ.get("MOTTE_KERNEL_DEB"):
            return False, "no keep kernel cached, and no apt-get to download it (or set MOTTE_KERNEL_DEB)"
        missing += [tool for tool in ("dpkg-deb", "zstd") if shutil.which(tool) is None]
    if missing:
        return False, f"building the keep image needs {', '.join(missing)} (dev/setup installs them)"
    return True, "QEMU present; the keep kernel and image are made on first use"
