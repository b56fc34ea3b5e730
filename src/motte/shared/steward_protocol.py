"""The Steward protocol as every party speaks it: OIDs, the key binding, the DER shapes, HTTP framing.

Pure functions over bytes. The keep uses them to build its request and read the answer, the Steward
to read the request, the tenant to read what an issued certificate says was attested.

The exchange (Enarx's Steward protocol, with motte's TDX OID added)::

    keep -> Steward   POST /   Content-Type: application/pkcs10   body: DER PKCS#10 CSR
    Steward -> keep   200      body: DER  SEQUENCE OF Certificate  =  [CA, issued]
                      400 malformed request or failed check, 401 no evidence, 413 body too large

The CSR has an empty subject and exactly one attribute, ``extensionRequest`` (1.2.840.113549.1.9.14),
holding exactly one non-critical extension. Its OID names the technology and its value is the
evidence, whose DER shape depends on the OID::

    -- 1.3.6.1.4.1.58270.1.1  KVM: no evidence (nil and kvm keeps). extnValue is empty.
    -- 1.3.6.1.4.1.58270.1.3  AMD SEV-SNP:
    SnpEvidence ::= SEQUENCE {
        crts    SEQUENCE {
            vcek  Certificate,      -- the VCEK (or the VLEK) that signed the report
            crls  CrlList },
        report  OCTET STRING }      -- the ATTESTATION_REPORT as the firmware returned it
    CrlList ::= SEQUENCE OF CertificateList     -- AMD CRLs the keep has; may be empty
    -- (Later Enarx Stewards pair each CRL with its URL; motte's CrlList is the plain list.)

    -- 1.3.6.1.4.1.58270.1.4  Intel TDX (motte's addition; Enarx has no TDX backend):
    -- 1.3.6.1.4.1.58270.1.2  Intel SGX (motte encodes SGX the same way; Enarx appended its own
    --                        collateral format to the raw quote, which motte does not read):
    DcapEvidence ::= SEQUENCE {
        quote       OCTET STRING,   -- the quote as the quoting enclave produced it (TDX v4/v5, SGX v3)
        collateral  UTF8String OPTIONAL }   -- DCAP collateral JSON (dcap-qvl schema), fetched by
                                            -- the host; signed by Intel, so who carries it is moot

The report data the evidence must carry binds the CSR's key: ``SHA-384(DER SubjectPublicKeyInfo)
|| 16 zero bytes`` on SNP, ``SHA-256(SPKI) || 32 zero bytes`` elsewhere (:func:`key_binding`).

An issued certificate says what was attested in non-critical extensions under
1.3.6.1.4.1.58270.2 (motte's arc)::

    .2.1  attestedTechnology  UTF8String    -- "snp" | "tdx" | "sgx", or "none": the CSR carried
                                            -- the KVM OID and the Steward's policy allows that
    .2.2  attestedMeasurement OCTET STRING  -- the launch measurement the policy accepted (SNP
                                            -- MEASUREMENT, TDX MRTD, SGX MRENCLAVE); absent for none
    .2.3  evidenceDigest      OCTET STRING  -- SHA-256 of the evidence (the extnValue); the key of
                                            -- the Steward's audit-log entry for this issuance
    .2.4  attestedClaims      UTF8String    -- JSON object: the verified claims (product, TCB,
                                            -- signer digests, debug, ...), bytes as lowercase hex
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from motte.shared.errors import MotteError

PKCS10 = "application/pkcs10"
CHAIN_CONTENT_TYPE = "application/octet-stream"  # as Enarx's Steward answers; the body is DER

EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14"
ENARX_ARC = "1.3.6.1.4.1.58270"
KVM_OID = ENARX_ARC + ".1.1"
SGX_OID = ENARX_ARC + ".1.2"
SNP_OID = ENARX_ARC + ".1.3"
TDX_OID = ENARX_ARC + ".1.4"
EVIDENCE_OIDS: dict[str, str] = {"kvm": KVM_OID, "sgx": SGX_OID, "snp": SNP_OID, "tdx": TDX_OID}
TECHNOLOGY_BY_OID: dict[str, str] = {oid: tech for tech, oid in EVIDENCE_OIDS.items()}

ATTESTED_TECHNOLOGY_OID = ENARX_ARC + ".2.1"
ATTESTED_MEASUREMENT_OID = ENARX_ARC + ".2.2"
EVIDENCE_DIGEST_OID = ENARX_ARC + ".2.3"
ATTESTED_CLAIMS_OID = ENARX_ARC + ".2.4"
UNATTESTED = "none"

MAX_CSR = 64 * 1024  # the Steward refuses larger bodies (413); SNP evidence is ~3 KiB
MAX_RESPONSE_HEAD = 16 * 1024
MAX_RESPONSE_BODY = 64 * 1024


class ProtocolError(MotteError):
    """Bytes that do not have the shape this protocol defines."""


# --- the key binding -----------------------------------------------------------------------------
def key_curve(technology: str) -> ec.EllipticCurve:
    """P-384 on SNP (as strong as the VCEK that signs the report), P-256 elsewhere (as the PCK)."""
    return ec.SECP384R1() if technology == "snp" else ec.SECP256R1()


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def key_binding(spki: bytes, technology: str) -> bytes:
    """The 64 bytes of report data that bind evidence to the key whose DER SPKI is ``spki``."""
    digest = hashlib.sha384(spki).digest() if technology == "snp" else hashlib.sha256(spki).digest()
    return digest.ljust(64, b"\0")


def csr_hash(technology: str) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if technology == "snp" else hashes.SHA256()


# --- DER, just what this protocol needs ----------------------------------------------------------
TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_UTF8STRING = 0x0C
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
TAG_CONTEXT_0 = 0xA0
MAX_LENGTH_BYTES = 4


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def der_sequence(*items: bytes) -> bytes:
    return der_tlv(TAG_SEQUENCE, b"".join(items))


def der_octet_string(data: bytes) -> bytes:
    return der_tlv(TAG_OCTET_STRING, data)


def der_utf8(text: str) -> bytes:
    return der_tlv(TAG_UTF8STRING, text.encode("utf-8"))


class Tlv(NamedTuple):
    tag: int
    content: bytes
    encoded: bytes  # the whole TLV, tag and length included


class DerReader:
    """Reads consecutive TLVs from ``data``: definite, minimal lengths only, nothing out of bounds."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def error(self, detail: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: {detail}")

    @property
    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def read(self, tag: int | None = None, name: str = "value") -> Tlv:
        data, start = self.data, self.pos
        if start + 2 > len(data):
            raise self.error(f"truncated DER at {name}")
        got, first = data[start], data[start + 1]
        if got & 0x1F == 0x1F:
            raise self.error(f"high-tag-number form at {name} is not used by this protocol")
        pos = start + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0:
                raise self.error(f"indefinite length at {name} (DER forbids it)")
            if count > MAX_LENGTH_BYTES or pos + count > len(data):
                raise self.error(f"bad length at {name}")
            length = int.from_bytes(data[pos : pos + count], "big")
            if length < 0x80 or data[pos] == 0:
                raise self.error(f"non-minimal length at {name}")
            pos += count
        end = pos + length
        if end > len(data):
            raise self.error(f"{name} claims {length} bytes but only {len(data) - pos} remain")
        if tag is not None and got != tag:
            raise self.error(f"expected {_TAG_NAMES.get(tag, hex(tag))} for {name}, got tag {got:#04x}")
        self.pos = end
        return Tlv(got, data[pos:end], data[start:end])

    def done(self) -> None:
        if not self.at_end:
            raise self.error(f"{len(self.data) - self.pos} unexpected trailing bytes")


_TAG_NAMES = {
    TAG_BOOLEAN: "BOOLEAN",
    TAG_INTEGER: "INTEGER",
    TAG_OCTET_STRING: "OCTET STRING",
    TAG_OID: "OBJECT IDENTIFIER",
    TAG_UTF8STRING: "UTF8String",
    TAG_SEQUENCE: "SEQUENCE",
    TAG_SET: "SET",
    TAG_CONTEXT_0: "[0]",
}


def read_one(data: bytes, tag: int, what: str) -> bytes:
    """The content of the single TLV that fills ``data`` exactly."""
    reader = DerReader(data, what)
    content = reader.read(tag, what).content
    reader.done()
    return content


def decode_oid(content: bytes, what: str = "OID") -> str:
    if not content or content[-1] & 0x80:
        raise ProtocolError(f"{what}: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for i, byte in enumerate(content):
        if value == 0 and byte == 0x80 and (i == 0 or not content[i - 1] & 0x80):
            raise ProtocolError(f"{what}: non-minimal OBJECT IDENTIFIER arc")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


# --- the CSR's attestation extension -------------------------------------------------------------
class CsrExtension(NamedTuple):
    oid: str
    critical: bool
    value: bytes


class CsrInfo(NamedTuple):
    """What the CertificationRequestInfo holds, read strictly from its DER."""

    subject: bytes  # DER Name (0x30 0x00 when empty)
    spki: bytes  # DER SubjectPublicKeyInfo
    attributes: list[tuple[str, list[bytes]]]  # (type OID, DER values)


def read_csr_info(info_der: bytes) -> CsrInfo:
    """Parse ``CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, [0] attributes }``."""
    outer = DerReader(info_der, "CSR")
    body = DerReader(outer.read(TAG_SEQUENCE, "CertificationRequestInfo").content, "CSR")
    outer.done()
    version = body.read(TAG_INTEGER, "version").content
    if version != b"\x00":
        raise ProtocolError("CSR: version must be 0 (v1)")
    subject = body.read(TAG_SEQUENCE, "subject").encoded
    spki = body.read(TAG_SEQUENCE, "subjectPKInfo").encoded
    attributes: list[tuple[str, list[bytes]]] = []
    if not body.at_end:
        attrs = DerReader(body.read(TAG_CONTEXT_0, "attributes").content, "CSR attributes")
        while not attrs.at_end:
            attr = DerReader(attrs.read(TAG_SEQUENCE, "Attribute").content, "CSR attribute")
            oid = decode_oid(attr.read(TAG_OID, "attribute type").content, "CSR attribute type")
            values_reader = DerReader(attr.read(TAG_SET, "attribute values").content, "CSR attribute values")
            attr.done()
            values = []
            while not values_reader.at_end:
                values.append(values_reader.read(name="attribute value").encoded)
            attributes.append((oid, values))
    body.done()
    return CsrInfo(subject, spki, attributes)


def read_extensions(extensions_der: bytes) -> list[CsrExtension]:
    """Parse ``Extensions ::= SEQUENCE OF Extension`` (DER: a FALSE ``critical`` must be absent)."""
    outer = DerReader(extensions_der, "extensionRequest")
    seq = DerReader(outer.read(TAG_SEQUENCE, "Extensions").content, "extensionRequest")
    outer.done()
    out: list[CsrExtension] = []
    while not seq.at_end:
        ext = DerReader(seq.read(TAG_SEQUENCE, "Extension").content, "extension")
        oid = decode_oid(ext.read(TAG_OID, "extnID").content, "extnID")
        critical = False
        tlv = ext.read(name="critical or extnValue")
        if tlv.tag == TAG_BOOLEAN:
            if tlv.content != b"\xff":
                raise ProtocolError(f"extension {oid}: critical must be absent or TRUE (DER)")
            critical = True
            tlv = ext.read(TAG_OCTET_STRING, "extnValue")
        elif tlv.tag != TAG_OCTET_STRING:
            raise ProtocolError(f"extension {oid}: extnValue must be an OCTET STRING")
        ext.done()
        out.append(CsrExtension(oid, critical, tlv.content))
    return out


# --- evidence shapes (the Steward reads them; motte.keep.evidence.der writes them) ---------------
class SnpEvidence(NamedTuple):
    vcek: bytes  # DER Certificate
    crls: list[bytes]  # DER CertificateList each
    report: bytes


class DcapEvidence(NamedTuple):
    quote: bytes
    collateral: str | None


def decode_snp_evidence(data: bytes) -> SnpEvidence:
    outer = DerReader(data, "SNP evidence")
    top = DerReader(outer.read(TAG_SEQUENCE, "SnpEvidence").content, "SNP evidence")
    outer.done()
    crts = DerReader(top.read(TAG_SEQUENCE, "crts").content, "SNP evidence crts")
    vcek = crts.read(TAG_SEQUENCE, "vcek").encoded
    crl_reader = DerReader(crts.read(TAG_SEQUENCE, "crls").content, "SNP evidence crls")
    crts.done()
    crls = []
    while not crl_reader.at_end:
        crls.append(crl_reader.read(TAG_SEQUENCE, "CertificateList").encoded)
    report = top.read(TAG_OCTET_STRING, "report").content
    top.done()
    return SnpEvidence(vcek, crls, report)


def decode_dcap_evidence(data: bytes) -> DcapEvidence:
    outer = DerReader(data, "DCAP evidence")
    top = DerReader(outer.read(TAG_SEQUENCE, "DcapEvidence").content, "DCAP evidence")
    outer.done()
    quote = top.read(TAG_OCTET_STRING, "quote").content
    collateral = None
    if not top.at_end:
        raw = top.read(TAG_UTF8STRING, "collateral").content
        try:
            collateral = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("DCAP evidence: collateral is not UTF-8") from exc
    top.done()
    return DcapEvidence(quote, collateral)


# --- the answer: SEQUENCE OF Certificate = [CA, issued] -------------------------------------------
def encode_chain(certificates: list[bytes]) -> bytes:
    return der_sequence(*certificates)


def decode_chain(body: bytes) -> list[bytes]:
    outer = DerReader(body, "Steward response")
    seq = DerReader(outer.read(TAG_SEQUENCE, "SEQUENCE OF Certificate").content, "Steward response")
    outer.done()
    certs = []
    while not seq.at_end:
        certs.append(seq.read(TAG_SEQUENCE, "Certificate").encoded)
    return certs


class IssuedChain(NamedTuple):
    ca: x509.Certificate
    leaf: x509.Certificate

    @property
    def certificates(self) -> tuple[x509.Certificate, x509.Certificate]:
        """Leaf first, then the CA: the order a TLS server sends its chain in."""
        return (self.leaf, self.ca)

    def pem(self) -> bytes:
        return b"".join(cert.public_bytes(Encoding.PEM) for cert in self.certificates)


def read_issued_chain(body: bytes, public_key: ec.EllipticCurvePublicKey) -> IssuedChain:
    """Check the Steward's answer as far as the keep can: two certificates, the second issued by
    the first to *this* key. (Whether the CA is the right one is the relying party's question.)"""
    ders = decode_chain(body)
    if len(ders) != 2:
        raise ProtocolError(f"Steward response: expected [CA, issued], got {len(ders)} certificates")
    try:
        ca, leaf = (x509.load_der_x509_certificate(d) for d in ders)
    except ValueError as exc:
        raise ProtocolError(f"Steward response: not a certificate: {exc}") from exc
    if spki_der(public_key) != leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        raise ProtocolError("Steward response: the issued certificate is not for this keep's key")
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"Steward response: the issued certificate is not signed by its CA: {exc}") from exc
    except InvalidSignature as exc:
        raise ProtocolError("Steward response: the issued certificate's signature does not verify") from exc
    return IssuedChain(ca, leaf)


# --- what an issued certificate says -------------------------------------------------------------
class Attestation(NamedTuple):
    technology: str  # "snp" | "tdx" | "sgx" | "none"; "" when the certificate carries no such claim
    measurement: bytes | None
    evidence_sha256: bytes | None
    claims: dict[str, Any]

    @property
    def attested(self) -> bool:
        return self.technology not in ("", UNATTESTED)


def read_attestation(cert: x509.Certificate) -> Attestation:
    """The attestation extensions of a Steward-issued certificate (empty for any other)."""
    values: dict[str, bytes] = {}
    for ext in cert.extensions:
        if ext.oid.dotted_string.startswith(ENARX_ARC + ".2.") and isinstance(ext.value, x509.UnrecognizedExtension):
            values[ext.oid.dotted_string] = ext.value.value
    tech_raw = values.get(ATTESTED_TECHNOLOGY_OID)
    technology = read_one(tech_raw, TAG_UTF8STRING, "attestedTechnology").decode() if tech_raw else ""
    measurement = values.get(ATTESTED_MEASUREMENT_OID)
    digest = values.get(EVIDENCE_DIGEST_OID)
    claims_raw = values.get(ATTESTED_CLAIMS_OID)
    claims: dict[str, Any] = {}
    if claims_raw:
        try:
            loaded = json.loads(read_one(claims_raw, TAG_UTF8STRING, "attestedClaims"))
        except ValueError as exc:
            raise ProtocolError("attestedClaims is not JSON") from exc
        if isinstance(loaded, dict):
            claims = loaded
    return Attestation(
        technology,
        read_one(measurement, TAG_OCTET_STRING, "attestedMeasurement") if measurement else None,
        read_one(digest, TAG_OCTET_STRING, "evidenceDigest") if digest else None,
        claims,
    )


# --- HTTP/1.1 framing for the keep's request (the keep does its own TLS; the host relays bytes) --
class StewardUrl(NamedTuple):
    host: str
    port: int
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"


def parse_steward_url(url: str) -> StewardUrl:
    """Enarx.toml's ``steward``: an https URL. Plain http would let the host rewrite the answer."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ProtocolError(f"steward URL {url!r}: {exc}") from exc
    if parts.scheme != "https" or not parts.hostname:
        raise ProtocolError(f"steward URL {url!r} must be https://host[:port][/path]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ProtocolError(f"steward URL {url!r}: no user, query or fragment allowed")
    return StewardUrl(parts.hostname, port, parts.path or "/")


def build_request(url: StewardUrl, csr_der: bytes) -> bytes:
    head = (
        f"POST {url.path} HTTP/1.1\r\n"
        f"Host: {url.host_header}\r\n"
        f"Content-Type: {PKCS10}\r\n"
        f"Content-Length: {len(csr_der)}\r\n"
        "Accept: application/octet-stream\r\n"
        "User-Agent: motte-keep\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + csr_der


class ResponseReader:
    """Sans-I/O reader of one HTTP/1.1 response: feed bytes as they arrive, then read ``status``,
    ``headers`` and ``body`` once ``complete``. Content-Length, chunked, and read-to-EOF bodies;
    every size bounded."""

    def __init__(self, max_body: int = MAX_RESPONSE_BODY) -> None:
        self.max_body = max_body
        self._buf = bytearray()
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False
        self._head_done = False
        self._length: int | None = None
        self._chunked = False
        self._eof = False

    def feed(self, data: bytes) -> None:
        if self.complete:
            return
        self._buf += data
        self._advance()

    def feed_eof(self) -> None:
        self._eof = True
        self._advance()
        if not self.complete:
            raise ProtocolError("Steward response: connection closed before the response was complete")

    def _advance(self) -> None:
        if not self._head_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_RESPONSE_HEAD:
                    raise ProtocolError("Steward response: header section too large")
                return
            self._parse_head(bytes(self._buf[:end]))
            del self._buf[: end + 4]
            self._head_done = True
        if self._chunked:
            self._advance_chunked()
        elif self._length is not None:
            if len(self._buf) >= self._length:
                self._finish(bytes(self._buf[: self._length]))
        else:
            if len(self._buf) > self.max_body:
                raise ProtocolError(f"Steward response: body larger than {self.max_body} bytes")
            if self._eof:
                self._finish(bytes(self._buf))

    def _parse_head(self, head: bytes) -> None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            version, code, *reason = lines[0].split(" ", 2)
            if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ValueError(lines[0])
            self.status, self.reason = int(code), reason[0] if reason else ""
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                self.headers[name.lower()] = value.strip()
        except ValueError as exc:
            raise ProtocolError(f"Steward response: malformed HTTP response head ({exc})") from exc
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        if length is not None and not self._chunked:
            if not length.isdigit() or int(length) > self.max_body:
                raise ProtocolError(f"Steward response: bad or too large Content-Length {length!r}")
            self._length = int(length)

    def _advance_chunked(self) -> None:
        body = bytearray()
        pos = 0
        buf = self._buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return
            size_text = bytes(buf[pos:eol]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError as exc:
                raise ProtocolError("Steward response: bad chunk size") from exc
            if len(body) + size > self.max_body:
                raise ProtocolError(f"Steward response: body larger than {self.max_body} bytes")
            if size == 0:
                if buf.find(b"\r\n\r\n", eol) < 0:
                    return  # the (possibly empty) trailer section is not complete yet
                self._finish(bytes(body))
                return
            if len(buf) < eol + 2 + size + 2:
                return
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2

    def _finish(self, body: bytes) -> None:
        self.body = body
        self.complete = True
