"""The Steward protocol's keys and certificates, as ``cryptography`` objects.

The key a keep makes for its CSR, the ``[CA, issued]`` chain the keep checks in the Steward's
answer, and what an issued certificate says was attested (the extensions under motte's arc, laid
out in :mod:`motte.shared.steward_protocol` and :mod:`motte.shared.binding`).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from motte.shared.binding import BINDING_ARC, KeepClaims
from motte.shared.der import TAG_OCTET_STRING, TAG_UTF8STRING, read_one, read_string
from motte.shared.steward_protocol import (
    ATTESTED_CLAIMS_OID,
    ATTESTED_MEASUREMENT_OID,
    ATTESTED_TECHNOLOGY_OID,
    ENARX_ARC,
    EVIDENCE_DIGEST_OID,
    UNATTESTED,
    StewardProtocolError,
    decode_chain,
    reads_der,
)


# --- the keep's key ------------------------------------------------------------------------------
def key_curve(technology: str) -> ec.EllipticCurve:
    """P-384 on SNP (as strong as the VCEK that signs the report), P-256 elsewhere (as the PCK)."""
    return ec.SECP384R1() if technology == "snp" else ec.SECP256R1()


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def csr_hash(technology: str) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if technology == "snp" else hashes.SHA256()


# --- the answer: [CA, issued] --------------------------------------------------------------------
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
        raise StewardProtocolError(f"Steward response: expected [CA, issued], got {len(ders)} certificates")
    try:
        ca, leaf = (x509.load_der_x509_certificate(d) for d in ders)
    except ValueError as exc:
        raise StewardProtocolError(f"Steward response: not a certificate: {exc}") from exc
    if spki_der(public_key) != leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        raise StewardProtocolError("Steward response: the issued certificate is not for this keep's key")
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        raise StewardProtocolError(f"Steward response: the issued certificate is not signed by its CA: {exc}") from exc
    except InvalidSignature as exc:
        raise StewardProtocolError("Steward response: the issued certificate's signature does not verify") from exc
    return IssuedChain(ca, leaf)


# --- what an issued certificate says -------------------------------------------------------------
class Attestation(NamedTuple):
    technology: str  # "snp" | "tdx" | "sgx" | "none"; "" when the certificate carries no such claim
    measurement: bytes | None
    evidence_sha256: bytes | None
    claims: dict[str, Any]
    keep_claims: KeepClaims | None = None  # the workload and launch digests (and trust anchors), if any

    @property
    def attested(self) -> bool:
        return self.technology not in ("", UNATTESTED)


@reads_der
def read_attestation(cert: x509.Certificate) -> Attestation:
    """The attestation extensions of a Steward-issued certificate (empty for any other)."""
    values: dict[str, bytes] = {}
    bound: list[tuple[str, bytes]] = []  # in certificate order: KeepClaims checks it is OID order
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        if oid.startswith(ENARX_ARC + ".2."):
            values[oid] = ext.value.value
        elif oid.startswith(BINDING_ARC + "."):
            bound.append((oid, ext.value.value))
    tech_raw = values.get(ATTESTED_TECHNOLOGY_OID)
    technology = read_string(tech_raw, TAG_UTF8STRING, "attestedTechnology") if tech_raw else ""
    measurement = values.get(ATTESTED_MEASUREMENT_OID)
    digest = values.get(EVIDENCE_DIGEST_OID)
    claims_raw = values.get(ATTESTED_CLAIMS_OID)
    claims: dict[str, Any] = {}
    if claims_raw:
        try:
            loaded = json.loads(read_one(claims_raw, TAG_UTF8STRING, "attestedClaims"))
        except ValueError as exc:
            raise StewardProtocolError("attestedClaims is not JSON") from exc
        if isinstance(loaded, dict):
            claims = loaded
    return Attestation(
        technology,
        read_one(measurement, TAG_OCTET_STRING, "attestedMeasurement") if measurement else None,
        read_one(digest, TAG_OCTET_STRING, "evidenceDigest") if digest else None,
        claims,
        KeepClaims.from_extensions(bound),
    )
