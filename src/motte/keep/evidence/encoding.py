"""The evidence the keep puts in its CSR's attestation extension, in DER (the shapes are documented,
and read back, in :mod:`motte.shared.steward_protocol`)::

    SnpEvidence  ::= SEQUENCE { crts SEQUENCE { vcek Certificate, crls CrlList }, report OCTET STRING }
    CrlList      ::= SEQUENCE OF CertificateList
    DcapEvidence ::= SEQUENCE { quote OCTET STRING, collateral UTF8String OPTIONAL }
"""

from __future__ import annotations

from collections.abc import Sequence

from motte.shared.der import TAG_SEQUENCE, DerError, der_octet_string, der_sequence, der_utf8, read_one
from motte.shared.errors import MotteError

SNP_REPORT_SIZE = 0x4A0  # 1184 bytes, every report version so far


def _der_object(blob: bytes, what: str) -> bytes:
    """``blob`` as one DER SEQUENCE (a certificate or CRL); PEM text is converted."""
    if blob.lstrip().startswith(b"-----BEGIN"):
        blob = _pem_to_der(blob, what)
    try:
        read_one(blob, TAG_SEQUENCE, what)
    except DerError as exc:
        raise MotteError(f"{what} is not DER: {exc}") from exc
    return blob


def _pem_to_der(blob: bytes, what: str) -> bytes:
    import base64
    import binascii

    lines = blob.decode("ascii", "replace").strip().splitlines()
    if len(lines) < 3 or not lines[-1].startswith("-----END"):
        raise MotteError(f"{what} is neither DER nor a single PEM block")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except binascii.Error as exc:
        raise MotteError(f"{what}: bad PEM base64") from exc


def encode_snp_evidence(vcek: bytes, crls: Sequence[bytes], report: bytes) -> bytes:
    if len(report) != SNP_REPORT_SIZE:
        raise MotteError(f"an SNP attestation report is {SNP_REPORT_SIZE} bytes, got {len(report)}")
    crl_list = der_sequence(*(_der_object(c, f"CRL #{i + 1}") for i, c in enumerate(crls)))
    crts = der_sequence(_der_object(vcek, "VCEK certificate"), crl_list)
    return der_sequence(crts, der_octet_string(report))


def encode_dcap_evidence(quote: bytes, collateral: str | None = None) -> bytes:
    if not quote:
        raise MotteError("empty DCAP quote")
    items = [der_octet_string(quote)]
    if collateral is not None:
        items.append(der_utf8(collateral))
    return der_sequence(*items)
