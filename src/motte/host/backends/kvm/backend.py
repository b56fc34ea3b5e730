"""The kvm backend: what a kvm keep needs from this host, and launching one (with a retry)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from motte.host.backends.base import Backend, Check, LaunchSpec, Progress
from motte.host.backends.kvm.accel import BOOTS_A_GUEST, accel_checks, host_tsc_khz, resolve_accel, tcg_clock_params
from motte.host.backends.kvm.keep import HANG_TIMEOUT, BootHang, BootPlan, KvmKeep, boot
from motte.host.backends.kvm.qemu import QEMU, guest_memory_mib, kvm_boot_params, qemu_check, require_qemu
from motte.host.backends.kvm.rundir import sweep_stale_rundirs
from motte.host.backends.kvm.snapshot import Snapshot, snapshots_enabled
from motte.shared.errors import MotteError
from motte.shared.vm_port import PARK_PARAM

if TYPE_CHECKING:
    from motte.host.channel_tap import Tap as ChannelTap


class KvmBackend(Backend):
    name = "kvm"

    def __init__(
        self,
        *,
        guest_mode: str | None = None,
        retry_hangs: bool = True,
        vmlinux: str | None = None,
        initrd: str | None = None,
        cmdline: str | None = None,
        snapshots: bool | None = None,
    ):
        """``guest_mode`` selects ``MOTTE_MODE`` in the guest (None: the keep runtime;
        ``"selftest"``: the image's channel self test). ``vmlinux``/``initrd``/``cmdline`` override
        the cached image (tests, experiments); by default the image is built on first use.
        ``snapshots``: start keeps from a snapshot of a parked keep (None: unless
        ``MOTTE_KVM_SNAPSHOT=0``); only the keep runtime parks, so only it is ever restored."""
        self.guest_mode = guest_mode
        self.snapshots = snapshots_enabled() if snapshots is None else snapshots
        self.retry_hangs = retry_hangs
        self.vmlinux = vmlinux
        self.initrd = initrd
        self.cmdline = cmdline
        #: MOTTE_KVM_CONSOLE=<file>: attach a serial console and log the guest's kernel output
        #: there (a different command line, so a different measurement; for debugging only)
        self.console_log = os.environ.get("MOTTE_KVM_CONSOLE") or None

    # ---- what this host offers a kvm keep ---------------------------------------------------

    def data(self, *, probe: bool = False) -> list[Check]:
        qemu = qemu_check()
        return [qemu, *accel_checks(probe=probe, have_qemu=qemu.ok), *_image_checks()]

    def summary(self, checks: Sequence[Check]) -> str:
        if not self.have(checks):
            return f"no: {QEMU} is missing"
        accel = "KVM" if _named(checks, BOOTS_A_GUEST).ok else "TCG"
        return f"yes ({accel}): a micro-VM; the host can read its memory"

    def notes(self, checks: Sequence[Check]) -> list[str]:
        if _named(checks, "kvm_pvm").ok:
            return []
        return ["/dev/kvm here is PVM (kvm_pvm): kvm keeps run under TCG, 15-30x slower than native"]

    # ---- launching --------------------------------------------------------------------------

    def _image(self, progress: Progress | None) -> tuple[str, str, str]:
        if self.vmlinux and self.initrd:
            return self.vmlinux, self.initrd, self.cmdline or "quiet panic=-1"
        from motte.host.image.build import cached_image, ensure_image, kernel_cmdline

        image = cached_image()
        if image is None:
            if progress:
                progress("building the keep image (first use; cached afterwards)")
            image = ensure_image(progress)
        base = kernel_cmdline(self.guest_mode, console=bool(self.console_log))
        park = f" {PARK_PARAM}" if self.guest_mode is None and self.snapshots else ""
        cmdline = self.cmdline or f"{base} {kvm_boot_params()}{park}"
        return str(image.vmlinux), str(image.initrd), cmdline

    def launch(self, spec: LaunchSpec, progress: Progress | None = None) -> KvmKeep:
        qemu = require_qemu()
        if spec.vcpus < 1:
            raise MotteError(f"a keep needs at least one vCPU, not {spec.vcpus}")
        vmlinux, initrd, cmdline = self._image(progress)
        accel, why = resolve_accel(spec.accel, progress)
        if accel == "tcg":
            cmdline = f"{cmdline} {tcg_clock_params(host_tsc_khz())}"
        sweep_stale_rundirs()
        plan = BootPlan(
            qemu, accel, vmlinux, initrd, cmdline, guest_memory_mib(spec.memory_bytes), spec.vcpus,
            self.console_log, park=PARK_PARAM in cmdline.split(),
        )  # fmt: skip
        if plan.park and self.snapshots:
            snapshot = Snapshot.for_command(plan.command("@channel@"), qemu, accel, [vmlinux, initrd])
            plan = dataclasses.replace(plan, snapshot=snapshot)
        return self._boot_retrying(plan, spec.boot_timeout, f"{accel}: {why}", progress, spec.channel_tap)

    def _boot_retrying(self, plan: BootPlan, boot_timeout: float, why: str, progress: Progress | None,
                       channel_tap: ChannelTap | None = None) -> KvmKeep:
        """Boot, restoring the snapshot where there is one; a hang is retried once (if
        ``retry_hangs``), a snapshot that does not restore is dropped and the keep boots."""
        deadline = time.monotonic() + boot_timeout
        attempts = 0
        restore_failed = False
        while True:
            attempts += 1
            remaining = deadline - time.monotonic()
            # The first attempt gets at most half the boot timeout (and HANG_TIMEOUT), so that a
            # hang leaves time for the one retry; the retry gets what is left.
            first = min(boot_timeout / 2, HANG_TIMEOUT)
            budget = min(remaining, first) if self.retry_hangs and attempts == 1 else remaining
            restore = plan.snapshot is not None and not restore_failed and plan.snapshot.exists()
            if progress:
                if attempts > 1:
                    progress("the boot hung; retrying once")
                else:
                    progress(f"{'restoring' if restore else 'booting'} the micro-VM ({why})")
            try:
                return boot(plan, max(budget, 1.0), restore=restore, channel_tap=channel_tap)
            except MotteError as exc:
                if restore and plan.snapshot is not None:
                    # A snapshot that does not restore (a damaged file, a change the key missed)
                    # is dropped, and the keep boots instead.
                    plan.snapshot.discard()
                    restore_failed = True
                    attempts -= 1
                    continue
                if not isinstance(exc, BootHang):
                    raise
                if not self.retry_hangs or attempts >= 2 or deadline - time.monotonic() < 2.0:
                    raise MotteError(
                        f"the kvm keep did not boot: {exc.message}"
                        + (f" ({attempts} attempts)" if attempts > 1 else ""),
                        hint=exc.hint,
                    ) from None


def _named(checks: Sequence[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name)


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
