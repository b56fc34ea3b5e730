"""The Steward protocol as every party speaks it: OIDs, the key binding, the DER shapes.

Pure functions over bytes. The keep uses them to build its request and read the answer, the Steward
to read the request, the tenant to read what an issued certificate says was attested. Standard
library only: what needs ``cryptography`` (the keep's key, the issued chain, an issued certificate's
extensions) is in :mod:`motte.shared.steward_certs`, and the keep's HTTP framing in
:mod:`motte.shared.steward_http`.

The exchange (Enarx's Steward protocol, with motte's TDX OID added)::

    keep -> Steward   POST /   Content-Type: application/pkcs10   body: DER PKCS#10 CSR
    Steward -> keep   200      body: DER  SEQUENCE OF Certificate  =  [CA, issued]
                      400 malformed request or failed check, 401 no evidence, 413 body too large

The CSR has an empty subject and exactly one attribute, ``extensionRequest`` (1.2.840.113549.1.9.14),
holding one non-critical attestation extension first, then any of motte's binding extensions (the
workload and launch digests; :mod:`motte.shared.binding`, ``docs/binding.md``). The attestation
extension's OID names the technology and its value is the evidence, whose DER shape depends on the OID::

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
|| 16 zero bytes`` on SNP, ``SHA-256(SPKI) || 32 zero bytes`` elsewhere (:func:`key_binding`); a
CSR with binding extensions binds them too (:func:`motte.shared.binding.csr_report_data`).

An issued certificate says what was attested in non-critical extensions under
1.3.6.1.4.1.58270.2 (motte's arc)::

    .2.1  attestedTechnology  UTF8String    -- "snp" | "tdx" | "sgx", or "none": the CSR carried
                                            -- the KVM OID and the Steward's policy allows that
    .2.2  attestedMeasurement OCTET STRING  -- the launch measurement the policy accepted (SNP
                                            -- MEASUREMENT, TDX MRTD, SGX MRENCLAVE); absent for none
    .2.3  evidenceDigest      OCTET STRING  -- SHA-256 of the canonical form of the report or quote
                                            -- (motte.tenant.attest.canonical: one for every
                                            -- variant of that evidence); the key of the Steward's
                                            -- audit-log entry for this issuance
    .2.4  attestedClaims      UTF8String    -- JSON object: the verified claims (product, TCB,
                                            -- signer digests, debug, ...), bytes as lowercase hex

followed by the CSR's binding extensions (``.3.x``), copied verbatim.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import NamedTuple, ParamSpec, TypeVar

from motte.shared.der import (
    TAG_BOOLEAN,
    TAG_CONTEXT_0,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    TAG_SET,
    TAG_UTF8STRING,
    DerError,
    decode_oid,
    der_sequence,
    read_outer,
)
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

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StewardProtocolError(MotteError):
    """Bytes that do not have the shape the Steward protocol defines."""


def reads_der(parse: Callable[_P, _T]) -> Callable[_P, _T]:
    """``parse`` raising :class:`StewardProtocolError` for bad DER too: callers catch one error."""

    @functools.wraps(parse)
    def parse_strictly(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return parse(*args, **kwargs)
        except DerError as exc:
            raise StewardProtocolError(exc.message) from exc

    return parse_strictly


def report_data_digest(data: bytes, technology: str) -> bytes:
    """64 bytes of report data committing to ``data``: its SHA-384 on SNP, its SHA-256 elsewhere,
    zero-padded."""
    digest = hashlib.sha384(data).digest() if technology == "snp" else hashlib.sha256(data).digest()
    return digest.ljust(64, b"\0")


def key_binding(spki: bytes, technology: str) -> bytes:
    """The 64 bytes of report data that bind evidence to the key whose DER SPKI is ``spki``."""
    return report_data_digest(spki, technology)


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


@reads_der
def read_csr_info(info_der: bytes) -> CsrInfo:
    """Parse ``CertificationRequestInfo ::= SEQUENCE { version, subject, subjectPKInfo, [0] attributes }``."""
    body = read_outer(info_der, TAG_SEQUENCE, "CertificationRequestInfo", "CSR")
    version = body.read(TAG_INTEGER, "version").content
    if version != b"\x00":
        raise StewardProtocolError("CSR: version must be 0 (v1)")
    subject = body.read(TAG_SEQUENCE, "subject").encoded
    spki = body.read(TAG_SEQUENCE, "subjectPKInfo").encoded
    attributes: list[tuple[str, list[bytes]]] = []
    if not body.at_end:
        attrs = body.enter(TAG_CONTEXT_0, "attributes", "CSR attributes")
        while not attrs.at_end:
            attr = attrs.enter(TAG_SEQUENCE, "Attribute", "CSR attribute")
            oid = decode_oid(attr.read(TAG_OID, "attribute type").content, "CSR attribute type")
            values_reader = attr.enter(TAG_SET, "attribute values", "CSR attribute values")
            attr.done()
            values = []
            while not values_reader.at_end:
                values.append(values_reader.read(name="attribute value").encoded)
            attributes.append((oid, values))
    body.done()
    return CsrInfo(subject, spki, attributes)


@reads_der
def read_extensions(extensions_der: bytes) -> list[CsrExtension]:
    """Parse ``Extensions ::= SEQUENCE OF Extension`` (DER: a FALSE ``critical`` must be absent)."""
    seq = read_outer(extensions_der, TAG_SEQUENCE, "Extensions", "extensionRequest")
    out: list[CsrExtension] = []
    while not seq.at_end:
        ext = seq.enter(TAG_SEQUENCE, "Extension", "extension")
        oid = decode_oid(ext.read(TAG_OID, "extnID").content, "extnID")
        critical = False
        tlv = ext.read(name="critical or extnValue")
        if tlv.tag == TAG_BOOLEAN:
            if tlv.content != b"\xff":
                raise StewardProtocolError(f"extension {oid}: critical must be absent or TRUE (DER)")
            critical = True
            tlv = ext.read(TAG_OCTET_STRING, "extnValue")
        elif tlv.tag != TAG_OCTET_STRING:
            raise StewardProtocolError(f"extension {oid}: extnValue must be an OCTET STRING")
        ext.done()
        out.append(CsrExtension(oid, critical, tlv.content))
    return out


# --- evidence shapes (the Steward reads them; motte.keep.evidence.encoding writes them) ----------
class SnpEvidence(NamedTuple):
    vcek: bytes  # DER Certificate
    crls: list[bytes]  # DER CertificateList each
    report: bytes


class DcapEvidence(NamedTuple):
    quote: bytes
    collateral: str | None


@reads_der
def decode_snp_evidence(data: bytes) -> SnpEvidence:
    top = read_outer(data, TAG_SEQUENCE, "SnpEvidence", "SNP evidence")
    crts = top.enter(TAG_SEQUENCE, "crts", "SNP evidence crts")
    vcek = crts.read(TAG_SEQUENCE, "vcek").encoded
    crl_reader = crts.enter(TAG_SEQUENCE, "crls", "SNP evidence crls")
    crts.done()
    crls = []
    while not crl_reader.at_end:
        crls.append(crl_reader.read(TAG_SEQUENCE, "CertificateList").encoded)
    report = top.read(TAG_OCTET_STRING, "report").content
    top.done()
    return SnpEvidence(vcek, crls, report)


@reads_der
def decode_dcap_evidence(data: bytes) -> DcapEvidence:
    top = read_outer(data, TAG_SEQUENCE, "DcapEvidence", "DCAP evidence")
    quote = top.read(TAG_OCTET_STRING, "quote").content
    collateral = None
    if not top.at_end:
        raw = top.read(TAG_UTF8STRING, "collateral").content
        try:
            collateral = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StewardProtocolError("DCAP evidence: collateral is not UTF-8") from exc
    top.done()
    return DcapEvidence(quote, collateral)


# --- the answer: SEQUENCE OF Certificate = [CA, issued] -------------------------------------------
def encode_chain(certificates: list[bytes]) -> bytes:
    return der_sequence(*certificates)


@reads_der
def decode_chain(body: bytes) -> list[bytes]:
    seq = read_outer(body, TAG_SEQUENCE, "SEQUENCE OF Certificate", "Steward response")
    certs = []
    while not seq.at_end:
        certs.append(seq.read(TAG_SEQUENCE, "Certificate").encoded)
    return certs
