"""Launch command lines for confidential VM keeps (AMD SEV-SNP, Intel TDX), and the host checks
that must pass before one can run.

Nothing here runs QEMU: no machine of this project's kind has SEV-SNP or TDX, and its QEMU (7.2)
knows neither ``sev-snp-guest`` nor ``tdx-guest``. The builders are pure so that the command
lines can be reviewed and unit-tested, and the checks say precisely which requirement a host
misses. What differs from the ``kvm`` keep, and why:

* ``q35`` + OVMF (``-bios``), not ``microvm`` + PVH: the firmware is part of the measured launch,
  and it loads the *bzImage* (``vmlinuz``) through the EFI stub. With ``kernel-hashes=on`` (SNP)
  QEMU puts SHA-256 hashes of kernel, initrd and command line into a page OVMF measures, so the
  launch digest covers the keep image (``motte image measure --snp`` computes it in advance).
  TDX's TDVF measures them into RTMRs instead.
* guest RAM is a ``memory-backend-memfd`` (private memory is backed by guest_memfd in KVM);
* the channel is ``virtio-serial-pci`` with ``iommu_platform=true`` so the guest's virtio goes
  through bounce buffers in shared memory (swiotlb): the host cannot see private pages, by
  design. The 6.12 keep kernel has virtio-pci and the console driver built in.
* The SNP policy never has the DEBUG bit: a debuggable keep would let the host read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from motte.host.backends.base import BackendChecks, Check, failed, unsupported
from motte.host.backends.facts import cpu_flags, kernel_version, module_param
from motte.shared.errors import MotteError
from motte.shared.vm_port import PORT_NAME

QEMU = "qemu-system-x86_64"
SNP_MIN_QEMU = (9, 1)
SNP_MIN_KERNEL = (6, 11)
TDX_MIN_QEMU = (10, 1)
TDX_MIN_KERNEL = (6, 16)

# SEV-SNP guest policy bits (AMD SEV-SNP ABI specification, "Guest Policy").
SNP_POLICY_SMT = 1 << 16
SNP_POLICY_RESERVED_1 = 1 << 17  # must be 1
SNP_POLICY_DEBUG = 1 << 19
SNP_DEFAULT_POLICY = SNP_POLICY_SMT | SNP_POLICY_RESERVED_1  # 0x30000


@dataclass(frozen=True)
class ConfidentialLaunch:
    ovmf: str  # firmware: OVMF built for AMD SEV (AmdSev package) or TDVF
    kernel: str  # the bzImage (vmlinuz), not the PVH vmlinux
    initrd: str
    cmdline: str
    memory_mib: int
    vcpus: int
    socket_path: str  # the channel's unix socket (server=on,wait=on, as for kvm)
    qemu: str = QEMU


@dataclass(frozen=True)
class SnpOptions:
    cbitpos: int = 51  # CPUID 0x8000001F EBX[5:0] on the host (51 on Milan/Genoa)
    reduced_phys_bits: int = 1  # CPUID 0x8000001F EBX[11:6]
    policy: int = SNP_DEFAULT_POLICY
    vcpu_type: str = "EPYC-v4"  # part of the measurement (the VMSA's CPUID signature)


@dataclass(frozen=True)
class TdxOptions:
    #: the host's Quote Generation Service (QGS) on vsock, as QEMU's tdx-guest takes it; None: no
    #: quote generation through QEMU (the guest can still get a TDREPORT)
    qgs_vsock_port: int | None = 4050


def _common_tail(launch: ConfidentialLaunch) -> list[str]:
    return [
        "-bios", launch.ovmf,
        "-kernel", launch.kernel, "-initrd", launch.initrd, "-append", launch.cmdline,
        "-no-reboot", "-display", "none", "-monitor", "none",
        "-device", "virtio-serial-pci,disable-legacy=on,iommu_platform=true",
        "-chardev", f"socket,id=ch0,path={launch.socket_path},server=on,wait=on",
        "-device", f"virtserialport,chardev=ch0,name={PORT_NAME}",
    ]  # fmt: skip


def _check_launch(launch: ConfidentialLaunch) -> None:
    if launch.vcpus < 1:
        raise MotteError(f"a keep needs at least one vCPU, not {launch.vcpus}")
    if launch.memory_mib < 128:
        raise MotteError(f"{launch.memory_mib} MiB is too little memory for a confidential keep (need >= 128)")


def validate_snp_policy(policy: int, *, allow_debug: bool = False) -> None:
    if policy & SNP_POLICY_DEBUG and not allow_debug:
        raise MotteError(
            f"SEV-SNP policy {policy:#x} allows debugging, which lets the host read and change the keep",
            hint="clear bit 19 (DEBUG)",
        )
    if not policy & SNP_POLICY_RESERVED_1:
        raise MotteError(f"SEV-SNP policy {policy:#x} lacks bit 17, which the firmware requires to be 1")
    if policy >> 32:
        raise MotteError(f"SEV-SNP policy {policy:#x} has bits above 31 (this builder sets only the low word)")


def snp_command(launch: ConfidentialLaunch, options: SnpOptions = SnpOptions()) -> list[str]:
    """``qemu-system-x86_64`` arguments for an SEV-SNP keep (QEMU >= 9.1, Linux host >= 6.11)."""
    _check_launch(launch)
    validate_snp_policy(options.policy)
    memory = f"{launch.memory_mib}M"
    return [
        launch.qemu, "-nodefaults", "-no-user-config",
        "-accel", "kvm", "-cpu", options.vcpu_type,
        "-machine", "q35,confidential-guest-support=sev0,memory-backend=ram1,vmport=off",
        "-object", f"memory-backend-memfd,id=ram1,size={memory},share=true,prealloc=false",
        "-object",
        f"sev-snp-guest,id=sev0,cbitpos={options.cbitpos},reduced-phys-bits={options.reduced_phys_bits},"
        f"policy={options.policy:#x},kernel-hashes=on",
        "-m", memory, "-smp", str(launch.vcpus),
        *_common_tail(launch),
    ]  # fmt: skip


def tdx_command(launch: ConfidentialLaunch, options: TdxOptions = TdxOptions()) -> list[str]:
    """``qemu-system-x86_64`` arguments for a TDX keep (QEMU >= 10.1, Linux host >= 6.16)."""
    _check_launch(launch)
    tdx: dict[str, object] = {"qom-type": "tdx-guest", "id": "tdx0", "sept-ve-disable": True}
    if options.qgs_vsock_port is not None:
        # The quote socket is a SocketAddress, which only the JSON form of -object can express.
        tdx["quote-generation-socket"] = {"type": "vsock", "cid": "2", "port": str(options.qgs_vsock_port)}
    memory = f"{launch.memory_mib}M"
    return [
        launch.qemu, "-nodefaults", "-no-user-config",
        "-accel", "kvm", "-cpu", "host",
        "-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram1,hpet=off",
        "-object", json.dumps(tdx, separators=(",", ":"), sort_keys=True),
        "-object", f"memory-backend-memfd,id=ram1,size={memory},share=true,prealloc=false",
        "-m", memory, "-smp", str(launch.vcpus),
        *_common_tail(launch),
    ]  # fmt: skip


# ---- host checks ----------------------------------------------------------------------------


def _version(v: tuple[int, ...] | None) -> str:
    return ".".join(map(str, v)) if v else "absent"


def snp_checks(
    *,
    qemu_version: tuple[int, ...] | None,
    host_kernel: tuple[int, ...],
    cpu_flags: Iterable[str],
    dev_sev: bool,
    kvm_amd_sev_snp: str | None,
) -> list[Check]:
    """What an SEV-SNP keep needs from the host, each with its result."""
    flags = set(cpu_flags)
    return [
        Check("cpu flag sev_snp", "sev_snp" in flags,
              "present" if "sev_snp" in flags else "absent from /proc/cpuinfo: not an SNP-capable AMD EPYC host, "
              "or SNP is off in the BIOS"),
        Check("/dev/sev", dev_sev,
              "present" if dev_sev else "missing: no SEV firmware interface (ccp driver not loaded, or SEV off)"),
        Check("kvm_amd sev_snp", kvm_amd_sev_snp == "Y",
              f"/sys/module/kvm_amd/parameters/sev_snp = {kvm_amd_sev_snp}" if kvm_amd_sev_snp is not None
              else "kvm_amd is not loaded or has no sev_snp parameter"),
        Check("host kernel", host_kernel >= SNP_MIN_KERNEL,
              f"Linux {_version(host_kernel)}" + ("" if host_kernel >= SNP_MIN_KERNEL else
              f": KVM SEV-SNP guests need Linux >= {_version(SNP_MIN_KERNEL)}")),
        Check("QEMU version", qemu_version is not None and qemu_version >= SNP_MIN_QEMU,
              f"QEMU {_version(qemu_version)}" + ("" if qemu_version and qemu_version >= SNP_MIN_QEMU else
              f": the sev-snp-guest object needs QEMU >= {_version(SNP_MIN_QEMU)}")),
    ]  # fmt: skip


def tdx_checks(
    *,
    qemu_version: tuple[int, ...] | None,
    host_kernel: tuple[int, ...],
    cpu_flags: Iterable[str],
    kvm_intel_tdx: str | None,
) -> list[Check]:
    """What a TDX keep needs from the host, each with its result."""
    flags = set(cpu_flags)
    platform_flag = "tdx_host_platform" in flags
    return [
        Check("cpu flag tdx_host_platform", platform_flag,
              "present" if platform_flag else "absent from /proc/cpuinfo: no TDX module initialised by the "
              "BIOS on this host"),
        Check("kvm_intel tdx", kvm_intel_tdx == "Y",
              f"/sys/module/kvm_intel/parameters/tdx = {kvm_intel_tdx}" if kvm_intel_tdx is not None
              else "kvm_intel is not loaded or has no tdx parameter"),
        Check("host kernel", host_kernel >= TDX_MIN_KERNEL,
              f"Linux {_version(host_kernel)}" + ("" if host_kernel >= TDX_MIN_KERNEL else
              f": KVM TDX guests need Linux >= {_version(TDX_MIN_KERNEL)}")),
        Check("QEMU version", qemu_version is not None and qemu_version >= TDX_MIN_QEMU,
              f"QEMU {_version(qemu_version)}" + ("" if qemu_version and qemu_version >= TDX_MIN_QEMU else
              f": the tdx-guest object needs QEMU >= {_version(TDX_MIN_QEMU)}")),
    ]  # fmt: skip


def refuse_unless_ready(tech: str, checks: list[Check]) -> None:
    """Raise one clear error naming every failed check, or return."""
    missing = failed(checks)
    if missing:
        reasons = "; ".join(f"{c.name}: {c.detail}" for c in missing)
        raise MotteError(f"this host cannot launch a {tech} keep: {reasons}",
                         hint="see 'motte platform info'")  # fmt: skip


class _ConfidentialChecks(BackendChecks):
    """A confidential keep's host checks: reported, though no launcher is written yet."""

    def have(self, checks: Sequence[Check]) -> bool:
        return False  # every host requirement may hold, but motte cannot launch this keep yet

    def summary(self, checks: Sequence[Check]) -> str:
        if failed(checks):
            return unsupported(checks)
        return "host ready; not implemented yet: launch command lines and checks only"


def _guest_device_check(device: str, guest: str) -> Check:
    """Whether this machine is itself a confidential guest (for information only)."""
    if os.path.exists(device):
        return Check(device, True, f"present: this machine is itself {guest}", False)
    return Check(device, False, f"absent: this machine is not {guest}", False)


class SnpChecks(_ConfidentialChecks):
    name = "snp"

    def data(self, *, probe: bool = False) -> list[Check]:
        from motte.host.backends.kvm.qemu import qemu_version

        checks = snp_checks(
            qemu_version=qemu_version(),
            host_kernel=kernel_version(),
            cpu_flags=cpu_flags(),
            dev_sev=os.path.exists("/dev/sev"),
            kvm_amd_sev_snp=module_param("kvm_amd", "sev_snp"),
        )
        return [*checks, _guest_device_check("/dev/sev-guest", "an SEV-SNP guest")]


class TdxChecks(_ConfidentialChecks):
    name = "tdx"

    def data(self, *, probe: bool = False) -> list[Check]:
        from motte.host.backends.kvm.qemu import qemu_version

        checks = tdx_checks(
            qemu_version=qemu_version(),
            host_kernel=kernel_version(),
            cpu_flags=cpu_flags(),
            kvm_intel_tdx=module_param("kvm_intel", "tdx"),
        )
        return [*checks, _guest_device_check("/dev/tdx_guest", "a TDX guest")]
