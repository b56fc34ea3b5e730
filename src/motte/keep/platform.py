"""What the keep runs on, as the keep itself finds out (light: no cryptography, loaded before a
VM keep may be snapshotted)."""

from __future__ import annotations

from pathlib import Path


def vm_technology(sys_root: Path = Path("/sys"), cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What kind of VM keep this is, from what the guest kernel found in the hardware (never from
    what the host says): ``"snp"`` when it registered the sev-guest device (an SEV-SNP guest),
    ``"tdx"`` when it set the tdx_guest CPU flag, ``"kvm"`` otherwise."""
    if (sys_root / "bus/platform/devices/sev-guest").exists():
        return "snp"
    try:
        with cpuinfo.open() as lines:
            for line in lines:
                if line.startswith("flags"):
                    return "tdx" if "tdx_guest" in line.split() else "kvm"
    except OSError:
        pass
    return "kvm"
