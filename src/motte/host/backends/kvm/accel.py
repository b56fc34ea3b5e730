"""The accelerator of a kvm keep: whether KVM can boot it here (the verdict), and what TCG needs.

``auto`` uses KVM where KVM can really boot a guest, else QEMU's TCG emulator. A paravirtual KVM
(``kvm_pvm``) emulates every guest ring-0 instruction, so a stock kernel boots at 1/1000 speed and
dies: there the verdict is "no" without trying. Elsewhere a probe boot decides once, and the
verdict is cached for this host kernel, QEMU and set of KVM modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import platform as platform_mod
import re
import time
from dataclasses import dataclass
from pathlib import Path

from motte.host.backends.base import Check, LaunchSpec, Progress
from motte.host.backends.kvm.qemu import Accel, qemu_version
from motte.host.image.cache import cache_root
from motte.shared.errors import MotteError

DEV_KVM = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_CHECK_EXTENSION = 0xAE03  # _IO(KVMIO, 0x03)
KVM_CAP_VM_TYPES = 235
KVM_API_VERSION = 12  # the only version there has ever been
#: The check that carries the verdict, and with it the accelerator ``auto`` picks.
BOOTS_A_GUEST = "KVM boots a guest"


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool | None  # None: unknown (no cached verdict, and booting was not allowed)
    reason: str
    probed: bool  # a probe boot ran (else the verdict follows from the host's facts)
    fingerprint: str = ""
    checked_at: float = 0.0


def is_pvm() -> bool:
    """``/dev/kvm`` is PVM, a paravirtual KVM that emulates the guest's ring 0 in software."""
    return os.path.isdir("/sys/module/kvm_pvm")


def _verdict_file() -> Path:
    return cache_root() / "kvm-verdict.json"


def _fingerprint() -> str:
    # The verdict holds for this host kernel, this QEMU and these KVM modules.
    modules = sorted(m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if os.path.isdir(f"/sys/module/{m}"))
    return json.dumps([platform_mod.release(), qemu_version(), modules])


def kvm_verdict(
    *, probe: bool = False, allow_boot: bool = True, timeout: float = 30.0, progress: Progress | None = None
) -> KvmVerdict:
    """Whether KVM can boot the keep on this host.

    Order: no usable /dev/kvm -> no; a cached verdict for this host, QEMU and KVM modules -> it;
    PVM -> no, without booting (a boot would take minutes and then crash); else a probe boot,
    if ``allow_boot`` (``motte platform info`` does not boot unless asked). ``probe=True`` always
    boots and replaces the cached verdict.
    """
    if not os.path.exists(DEV_KVM):
        return KvmVerdict(False, "/dev/kvm does not exist (no KVM module loaded, or not exposed here)", False)
    if not os.access(DEV_KVM, os.R_OK | os.W_OK):
        return KvmVerdict(False, "no read/write permission on /dev/kvm (join the 'kvm' group)", False)
    fingerprint = _fingerprint()
    if not probe:
        try:
            cached = json.loads(_verdict_file().read_text())
            if cached.get("fingerprint") == fingerprint:
                return KvmVerdict(**cached)
        except (OSError, ValueError, TypeError):
            pass
        if is_pvm():
            return KvmVerdict(
                False,
                "/dev/kvm is PVM (kvm_pvm): it emulates the guest kernel's ring 0 in software, so a stock "
                "kernel boots ~1000x slower and dies on cmpxchg16b/xrstor",
                False,
                fingerprint,
                time.time(),
            )
        if not allow_boot:
            return KvmVerdict(None, "not probed yet", False, fingerprint)
    verdict = _probe_boot(timeout, fingerprint, progress)
    with contextlib.suppress(OSError):
        _verdict_file().parent.mkdir(parents=True, exist_ok=True)
        _verdict_file().write_text(json.dumps(dataclasses.asdict(verdict)) + "\n")
    return verdict


def _probe_boot(timeout: float, fingerprint: str, progress: Progress | None) -> KvmVerdict:
    from motte.host.backends.kvm.backend import KvmBackend  # which imports this module

    started = time.monotonic()
    try:
        keep = KvmBackend(guest_mode="selftest", retry_hangs=False).launch(
            LaunchSpec(memory_bytes=0, boot_timeout=timeout, accel="kvm"), progress
        )
    except MotteError as exc:
        return KvmVerdict(False, f"a probe boot under KVM failed: {exc.message}", True, fingerprint, time.time())
    try:
        keep.endpoint.send_control("bye")
        keep.wait(5)
    finally:
        keep.close()
    seconds = time.monotonic() - started
    return KvmVerdict(True, f"a probe boot under KVM said HELLO in {seconds:.2f} s", True, fingerprint, time.time())


def accel_for(verdict: KvmVerdict) -> tuple[Accel, str]:
    """``(accelerator, why)`` that ``auto`` picks on this verdict: KVM only where it boots a guest."""
    if verdict.usable:
        return "kvm", verdict.reason
    return "tcg", f"KVM unusable: {verdict.reason}"


def resolve_accel(requested: str, progress: Progress | None = None) -> tuple[Accel, str]:
    """``(accelerator, why)`` for ``auto``, ``kvm`` or ``tcg``."""
    if requested == "tcg":
        return "tcg", "TCG requested"
    if requested == "kvm":
        return "kvm", "KVM requested"
    if requested != "auto":
        raise MotteError(f"unknown accelerator {requested!r}", hint="use auto, kvm or tcg")
    return accel_for(kvm_verdict(progress=progress))


def refuse_known_unusable_kvm() -> None:
    """For a user's ``--accel kvm``: where KVM is known not to boot a guest (no /dev/kvm, PVM, a
    failed probe), say so now rather than after a boot timeout. (A probe boot asks for KVM too,
    and must try: it does not come through here.)"""
    verdict = kvm_verdict(allow_boot=False)
    if verdict.usable is False:
        raise MotteError(f"--accel kvm: KVM cannot boot a guest on this host: {verdict.reason}",
                         hint="use --accel auto (it picks TCG here) or --accel tcg; motte platform info says why")


# ---- what TCG needs -------------------------------------------------------------------------


def host_tsc_khz(cpuinfo: str | None = None) -> int | None:
    """The host's TSC frequency in kHz, when the host's TSC is constant (else None).

    Under TCG the guest's TSC is the host's (QEMU reads the host TSC for RDTSC), so the host knows
    the guest's TSC frequency. /proc/cpuinfo's "cpu MHz" is the TSC frequency only with
    ``constant_tsc``; without it (frequency scaling) it is the current clock and useless here.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.M)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    if not flags or "constant_tsc" not in flags[1].split() or not mhz:
        return None
    khz = round(float(mhz[1]) * 1000)
    return khz if 100_000 <= khz <= 10_000_000 else None


def tcg_clock_params(tsc_khz: int | None) -> str:
    """Kernel parameters that make TCG boots reliable.

    Under TCG the guest calibrates its TSC against the emulated PIT, with timing that depends on
    the host's load; when that fails ("Unable to calibrate against PIT ... Marking TSC unstable")
    microvm has no other clock (no HPET, no ACPI PM timer) and the boot hangs (docs/vm-keep.md).
    ``tsc_early_khz`` gives the frequency instead, and ``tsc=reliable`` stops the clocksource
    watchdog from demoting the TSC to jiffies (4 ms resolution) when emulation delays its timer
    interrupts.
    """
    return f"tsc_early_khz={tsc_khz} tsc=reliable" if tsc_khz else "tsc=reliable"


# ---- the checks 'motte platform info' shows ---------------------------------------------------


def kvm_api() -> tuple[int | None, int | None, str]:
    """``(api_version, vm_types, error)`` from ``KVM_GET_API_VERSION`` / ``KVM_CHECK_EXTENSION``."""
    try:
        fd = os.open(DEV_KVM, os.O_RDWR | os.O_CLOEXEC)
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


def accel_checks(*, probe: bool, have_qemu: bool) -> list[Check]:
    """/dev/kvm, PVM, the verdict and the accelerator ``auto`` picks, as checks; none decides
    whether kvm keeps run (TCG runs them where KVM cannot). A probe boot only with ``probe``."""
    dev_kvm = os.path.exists(DEV_KVM)
    checks = [Check("/dev/kvm", dev_kvm, "present" if dev_kvm else "missing (KVM not available here)", False)]
    if dev_kvm:
        api, vm_types, error = kvm_api()
        detail = error or f"KVM API {api}" + (f", VM types {vm_types:#x}" if vm_types is not None else "")
        checks.append(Check("KVM API version", api == KVM_API_VERSION, detail, False))
    pvm = is_pvm()
    checks.append(Check("kvm_pvm", not pvm,
                        "loaded: /dev/kvm is PVM, a paravirtual KVM that emulates guest ring 0" if pvm
                        else "not loaded", False))  # fmt: skip
    verdict = kvm_verdict(probe=probe, allow_boot=probe)
    if verdict.usable is None:
        guest_detail = "not probed yet (run 'motte platform info --probe')"
    else:
        guest_detail = ("probe boot: " if verdict.probed else "") + verdict.reason
    checks.append(Check(BOOTS_A_GUEST, bool(verdict.usable), guest_detail, False))
    accel, _why = accel_for(verdict)
    detail = "KVM" if accel == "kvm" else "TCG (software emulation, -cpu max): 15-30x slower"
    checks.append(Check("accelerator", have_qemu, detail, False))
    return checks
