"""What a keep's evidence binds, as report data: the constructions both the keep and its
verifiers compute (docs/binding.md)."""

from __future__ import annotations

import hashlib

from motte.shared.der import der_octet_string, der_oid, der_sequence
from motte.shared.steward_protocol import ENARX_ARC

PROVISION_BINDING_OID = ENARX_ARC + ".3.10"


def _report_data(technology: str, message: bytes) -> bytes:
    digest = hashlib.sha384(message).digest() if technology == "snp" else hashlib.sha256(message).digest()
    return digest.ljust(64, b"\0")


def provision_report_data(technology: str, nonce: bytes, spki: bytes, exporter: bytes) -> bytes:
    """The report data of a deploy session's evidence: the tenant's nonce, the keep's TLS key and
    the session's tls-exporter value, so the evidence answers this challenge on this session only."""
    message = der_sequence(der_oid(PROVISION_BINDING_OID), der_octet_string(nonce), spki, der_octet_string(exporter))
    return _report_data(technology, message)
