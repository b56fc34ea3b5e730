"""AMD SEV-SNP attestation report: byte layout and parsing (pure; no crypto, no I/O).

Offsets follow the SEV-SNP firmware ABI, ATTESTATION_REPORT structure. The report is 1184 bytes;
the ECDSA P-384 signature covers bytes [0, 0x2A0). Version 3 added the CPUID family/model/stepping
at 0x188; version 5 added the launch/current mitigation vectors at 0x1F8/0x200. Later versions are
parsed with the v5 layout (AMD extends the report only into reserved space) and flagged.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from motte.tenant.attest.claims import Reason, VerificationError

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0
SIG_R_OFFSET = 0x2A0
SIG_S_OFFSET = 0x2E8
SIG_COMPONENT_SIZE = 72  # little-endian field; a P-384 value fills the low 48 bytes
P384_SIZE = 48
SIG_RESERVED_OFFSET = 0x330
NEWEST_KNOWN_VERSION = 5

SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SIGNING_KEYS = {0: "VCEK", 1: "VLEK", 7: "NONE"}

POLICY_DEBUG_BIT = 1 << 19
POLICY_RESERVED_ONE_BIT = 1 << 17  # the ABI says this bit must be 1


@dataclass(frozen=True)
class SnpReport:
    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes  # TCB_VERSION fields stay raw: their layout depends on the product line
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid: tuple[int, int, int] | None  # family, model, stepping (v3+)
    chip_id: bytes
    committed_tcb: bytes
    current_fw: tuple[int, int, int]  # major, minor, build
    committed_fw: tuple[int, int, int]
    launch_tcb: bytes
    launch_mit_vector: int | None  # v5+
    current_mit_vector: int | None
    sig_r: int
    sig_s: int

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG_BIT)

    @property
    def signing_key_name(self) -> str:
        return SIGNING_KEYS.get(self.signing_key, f"reserved({self.signing_key})")


def _u32(data: bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", data, off)[0]
    return value


def _u64(data: bytes, off: int) -> int:
    value: int = struct.unpack_from("<Q", data, off)[0]
    return value


def parse_report(data: bytes) -> SnpReport:
    """Parse a raw 1184-byte report. Raises VerificationError(MALFORMED/UNSUPPORTED)."""
    if len(data) != REPORT_SIZE:
        raise VerificationError(Reason.MALFORMED, f"SNP report must be {REPORT_SIZE} bytes, got {len(data)}")
    version = _u32(data, 0x00)
    if version < 2:
        raise VerificationError(Reason.UNSUPPORTED, f"SNP report version {version} is not supported (< 2)")
    sig_algo = _u32(data, 0x34)
    if sig_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(Reason.UNSUPPORTED, f"SNP report signature algorithm {sig_algo} unknown")
    # The signature area is not itself signed: refuse anything but zeros where no value can be.
    # One change remains that keeps the verdict: s -> n - s (ECDSA accepts both, and genuine
    # firmware may sign with either), so a report's identity is its canonical form, with s in
    # low form (motte.tenant.attest.canonical), not its bytes.
    r_field = data[SIG_R_OFFSET : SIG_R_OFFSET + SIG_COMPONENT_SIZE]
    s_field = data[SIG_S_OFFSET : SIG_S_OFFSET + SIG_COMPONENT_SIZE]
    if any(r_field[P384_SIZE:]) or any(s_field[P384_SIZE:]) or any(data[SIG_RESERVED_OFFSET:]):
        raise VerificationError(Reason.MALFORMED, "SNP report: non-zero bytes in the unsigned signature area")
    key_info = _u32(data, 0x48)
    cpuid: tuple[int, int, int] | None = None
    if version >= 3 and data[0x188]:
        cpuid = (data[0x188], data[0x189], data[0x18A])
    launch_mit = current_mit = None
    if version >= 5:
        launch_mit = _u64(data, 0x1F8)
        current_mit = _u64(data, 0x200)
    return SnpReport(
        raw=bytes(data),
        version=version,
        guest_svn=_u32(data, 0x04),
        policy=_u64(data, 0x08),
        family_id=data[0x10:0x20],
        image_id=data[0x20:0x30],
        vmpl=_u32(data, 0x30),
        signature_algo=sig_algo,
        current_tcb=data[0x38:0x40],
        platform_info=_u64(data, 0x40),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key=(key_info >> 2) & 0x7,
        report_data=data[0x50:0x90],
        measurement=data[0x90:0xC0],
        host_data=data[0xC0:0xE0],
        id_key_digest=data[0xE0:0x110],
        author_key_digest=data[0x110:0x140],
        report_id=data[0x140:0x160],
        report_id_ma=data[0x160:0x180],
        reported_tcb=data[0x180:0x188],
        cpuid=cpuid,
        chip_id=data[0x1A0:0x1E0],
        committed_tcb=data[0x1E0:0x1E8],
        current_fw=(data[0x1EA], data[0x1E9], data[0x1E8]),
        committed_fw=(data[0x1EE], data[0x1ED], data[0x1EC]),
        launch_tcb=data[0x1F0:0x1F8],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        sig_r=int.from_bytes(r_field[:P384_SIZE], "little"),
        sig_s=int.from_bytes(s_field[:P384_SIZE], "little"),
    )


# --- TCB_VERSION -------------------------------------------------------------------------------
# Before Turin: byte 0 boot loader, 1 TEE, 2..5 reserved, 6 SNP, 7 microcode.
# Turin:        byte 0 FMC, 1 boot loader, 2 TEE, 3 SNP, 4..6 reserved, 7 microcode.
_TCB_LAYOUT = {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
_TCB_LAYOUT_TURIN = {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}


def tcb_components(tcb: bytes, product: str | None) -> dict[str, int]:
    layout = _TCB_LAYOUT_TURIN if product == "Turin" else _TCB_LAYOUT
    return {name: tcb[i] for name, i in layout.items()}


# --- Product line from CPUID --------------------------------------------------------------------
def product_from_cpuid(family: int, model: int) -> str | None:
    """The product line a CPUID family/model belongs to, or None if this table does not know it."""
    if family == 0x19:
        if model <= 0x0F:
            return "Milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "Genoa"  # includes Bergamo and Siena, which share Genoa's keys
    if family == 0x1A and model <= 0x1F:
        return "Turin"
    return None
