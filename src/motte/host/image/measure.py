"""Digests of what a VM keep is launched from, computed before launch.

For a ``kvm`` keep these are plain file digests (nothing measures a KVM launch; they identify the
image). For an SEV-SNP keep, :func:`snp_launch_digest` computes the launch digest the AMD secure
processor will put into the attestation report's MEASUREMENT field, from the OVMF firmware, the
vCPU count and type, and (through OVMF's kernel-hashes table) the bzImage, the initrd and the
command line; it is what a verifier policy allow-lists. The computation is PyPI
``sev-snp-measure``'s (its ``guest.calc_launch_digest``); motte only supplies the inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from motte.outside.user_files import check_user_file
from motte.shared.errors import MotteError

SNP_GUEST_FEATURES = 0x1  # SNP active; the sev-snp-measure default, as QEMU sets it
MAX_OVMF_SIZE = 64 << 20  # an OVMF image is a few MiB; a flash device holds at most 16


@dataclass(frozen=True)
class Digest:
    name: str
    source: str  # a path, or "cmdline"
    size: int
    sha256: str
    sha384: str


def digest_bytes(name: str, source: str, data: bytes) -> Digest:
    return Digest(name, source, len(data), hashlib.sha256(data).hexdigest(), hashlib.sha384(data).hexdigest())


def digest_file(name: str, path: Path) -> Digest:
    h256, h384 = hashlib.sha256(), hashlib.sha384()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h256.update(block)
            h384.update(block)
            size += len(block)
    return Digest(name, str(path), size, h256.hexdigest(), h384.hexdigest())


def cmdline_digest(cmdline: str) -> Digest:
    # As QEMU hashes it for the SEV kernel-hashes table: the string plus its NUL terminator.
    return digest_bytes("cmdline", "cmdline", cmdline.encode() + b"\0")


def snp_launch_digest(
    *,
    ovmf: Path,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    vcpus: int,
    vcpu_type: str = "EPYC-v4",
    guest_features: int = SNP_GUEST_FEATURES,
) -> bytes:
    """The 48-byte SEV-SNP launch digest of a keep started with ``-kernel/-initrd/-append`` and
    ``kernel-hashes=on`` (see :func:`motte.host.backends.confidential.snp_command`)."""
    try:
        from sevsnpmeasure import guest, vcpu_types, vmm_types
        from sevsnpmeasure.sev_mode import SevMode
    except ImportError as exc:
        raise MotteError("the sev-snp-measure package is needed", hint="pip install sev-snp-measure") from exc
    if vcpus < 1:
        raise MotteError(f"--vcpus must be at least 1, not {vcpus}")
    signature = vcpu_types.CPU_SIGS.get(vcpu_type)
    if signature is None:
        known = ", ".join(sorted(vcpu_types.CPU_SIGS))
        raise MotteError(f"unknown vCPU type {vcpu_type!r}", hint=f"one of: {known}")
    # sev-snp-measure reads the firmware by its path: check first it is a regular file of a sane size.
    check_user_file(ovmf, what="OVMF", limit=MAX_OVMF_SIZE, hint="an OVMF built with OvmfPkg/AmdSev")
    for path in (kernel, initrd):
        if not path.is_file():
            raise MotteError(f"{path}: no such file")
    try:
        digest = guest.calc_launch_digest(
            SevMode.SEV_SNP,
            vcpus,
            signature,
            str(ovmf),
            str(kernel),
            str(initrd),
            cmdline,
            guest_features,
            "",
            vmm_types.VMMType.QEMU,
        )
    except (RuntimeError, ValueError) as exc:
        raise MotteError(
            f"cannot compute the SEV-SNP launch digest with {ovmf}: {exc}",
            hint="use an OVMF built for SEV (OvmfPkg/AmdSev, with the SNP kernel-hashes section)",
        ) from exc
    return bytes(digest)
