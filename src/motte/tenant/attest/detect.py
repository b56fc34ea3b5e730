"""Tell which technology a piece of evidence is for, and undo text encodings (hex, base64)."""

from __future__ import annotations

import base64
import binascii
import re
import struct

from motte.tenant.attest import hcl, snp
from motte.tenant.attest.claims import Reason, VerificationError

KINDS = ("snp", "tdx", "sgx", "nitro")
MAX_EVIDENCE = 1024 * 1024
_HEX = re.compile(rb"[0-9a-fA-F\s]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")


def decode_text(data: bytes) -> bytes:
    """Evidence files are sometimes hex or base64 text; binary evidence is returned unchanged."""
    if len(data) > MAX_EVIDENCE:
        raise VerificationError(Reason.MALFORMED, f"evidence is larger than {MAX_EVIDENCE} bytes")
    if not data.strip() or not _BASE64.fullmatch(data):
        return data
    compact = b"".join(data.split())
    if _HEX.fullmatch(data) and len(compact) % 2 == 0:
        return bytes.fromhex(compact.decode("ascii"))
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return data


def detect_kind(data: bytes) -> str:
    """Guess the technology from the bytes' structure."""
    if hcl.is_hcl(data):
        return "snp"
    if data[:1] == b"\x84" or data[:2] == b"\xd2\x84":  # CBOR array(4), optionally tag 18: COSE_Sign1
        return "nitro"
    if len(data) >= 8:
        version, key_type, tee = struct.unpack_from("<HHI", data)
        if version in (3, 4, 5) and key_type in (2, 3):
            if tee == 0x81:
                return "tdx"
            if tee == 0:
                return "sgx"
    if len(data) == snp.REPORT_SIZE:
        return "snp"
    raise VerificationError(
        Reason.UNKNOWN_KIND,
        f"cannot tell what kind of evidence this is ({len(data)} bytes); pass the kind explicitly",
    )
