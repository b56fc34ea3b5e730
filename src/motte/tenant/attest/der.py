"""Just enough DER to read AMD's certificate extension values (INTEGER, OCTET STRING, IA5String).

``cryptography`` hands unknown extensions over as raw bytes; these helpers decode one TLV and insist
that it fills the value exactly, with minimal lengths.
"""

from __future__ import annotations

from motte.tenant.attest.claims import Reason, VerificationError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_IA5STRING = 0x16
MAX_LENGTH_BYTES = 3  # values here are tiny; anything longer is malformed by construction


def _error(what: str, detail: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, f"{what}: {detail}")


def read_tlv(data: bytes, what: str) -> tuple[int, bytes]:
    """Decode exactly one TLV filling ``data``; returns (tag, contents)."""
    if len(data) < 2:
        raise _error(what, "truncated DER value")
    tag, first = data[0], data[1]
    pos = 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > MAX_LENGTH_BYTES or len(data) < pos + count:
            raise _error(what, "bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
        if length < 0x80 or length >> (8 * (count - 1)) == 0:
            raise _error(what, "non-minimal DER length")
    if len(data) != pos + length:
        raise _error(what, f"DER length {length} does not fill the {len(data) - pos} bytes present")
    return tag, data[pos:]


def read_integer(data: bytes, what: str) -> int:
    tag, body = read_tlv(data, what)
    if tag != TAG_INTEGER or not body:
        raise _error(what, "expected a DER INTEGER")
    if body[0] & 0x80:
        raise _error(what, "negative INTEGER")
    if len(body) > 1 and body[0] == 0 and not body[1] & 0x80:
        raise _error(what, "non-minimal INTEGER")
    return int.from_bytes(body, "big")


def read_ia5string(data: bytes, what: str) -> str:
    tag, body = read_tlv(data, what)
    if tag != TAG_IA5STRING or not body.isascii():
        raise _error(what, "expected a DER IA5String")
    return body.decode("ascii")


def read_octet_string(data: bytes, what: str) -> bytes:
    tag, body = read_tlv(data, what)
    if tag != TAG_OCTET_STRING:
        raise _error(what, "expected a DER OCTET STRING")
    return body


def _span(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the TLV at ``pos``; raises on anything out of bounds."""
    if pos + 2 > len(data):
        raise _error("certificate", "truncated DER")
    tag, first = data[pos], data[pos + 1]
    start = pos + 2
    if first >= 0x80:
        count = first & 0x7F
        if count == 0 or count > MAX_LENGTH_BYTES or start + count > len(data):
            raise _error("certificate", "bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    else:
        length = first
    if start + length > len(data):
        raise _error("certificate", "DER value overruns its container")
    return tag, start, start + length


def signature_fields_consistent(cert_der: bytes) -> bool:
    """Whether the certificate's unsigned fields hold no slack: the outer signatureAlgorithm equals
    the signed one inside the TBS (RFC 5280 requires it), the signature BIT STRING has no unused
    bits, and nothing follows it. Only the TBS is signed, so a verifier that uses fixed algorithm
    parameters must check this itself or accept certificates altered outside the signature.
    """
    try:
        _, body, cert_end = _span(cert_der, 0)
        _, tbs, tbs_end = _span(cert_der, body)
        _, _, outer_end = _span(cert_der, tbs_end)
        sig_tag, sig_start, sig_end = _span(cert_der, outer_end)
        pos = tbs
        tag, _, end = _span(cert_der, pos)
        if tag == 0xA0:  # [0] EXPLICIT version
            pos = end
            tag, _, end = _span(cert_der, pos)
        _, _, inner_end = _span(cert_der, end)  # after the serial number: the inner algorithm
    except VerificationError:
        return False
    return (
        cert_der[end:inner_end] == cert_der[tbs_end:outer_end]
        and sig_tag == 0x03
        and sig_start < sig_end
        and cert_der[sig_start] == 0
        and sig_end == cert_end == len(cert_der)
    )
