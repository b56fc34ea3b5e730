"""Verify AWS Nitro Enclaves attestation documents (COSE_Sign1, ES384, chain to AWS Nitro root G1).

The document is CBOR ``[protected, unprotected, payload, signature]`` (optionally tag 18). The
payload's ``cabundle`` runs root-first to the last intermediate and ``certificate`` is the leaf.
The root must be the built-in AWS Nitro root G1, pinned by SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.roots import read_root
from motte.tenant.attest.x509util import CERT_ERRORS, check_validity, parsed, require_aware

AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
COSE_ALG_ES384 = -35
COSE_SIGN1_TAG = 18
MAX_DOCUMENT = 32 * 1024
MAX_CHAIN = 8
MAX_TIMESTAMP_MS = 253402300800000  # 10000-01-01: beyond it datetime cannot represent the time
PCR_SIZES = (32, 48, 64)
_REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
_OPTIONAL_MAX = {"public_key": 1024, "user_data": 512, "nonce": 512}


@functools.lru_cache(maxsize=1)
def aws_nitro_root_der() -> bytes:
    cert = x509.load_pem_x509_certificate(read_root("aws_nitro_root_g1.pem"))
    der = cert.public_bytes(Encoding.DER)
    if hashlib.sha256(der).hexdigest() != AWS_NITRO_ROOT_G1_SHA256:
        raise RuntimeError("built-in AWS Nitro root G1 does not match its pinned SHA-256")
    return der


def _malformed(message: str, claims: Claims | None = None) -> VerificationError:
    return VerificationError(Reason.MALFORMED, f"Nitro document: {message}", claims=claims)


def _decode_exact(data: bytes, what: str) -> Any:
    """Decode one CBOR item that must use every byte."""
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _malformed(f"{what} is not valid CBOR ({exc})") from exc
    if stream.tell() != len(data):
        raise _malformed(f"{len(data) - stream.tell()} bytes after the {what}")
    return item


def parse_cose_sign1(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (protected, payload, signature) of a COSE_Sign1 with an ES384 protected header."""
    if len(data) > MAX_DOCUMENT:
        raise _malformed(f"{len(data)} bytes is larger than {MAX_DOCUMENT}")
    item = _decode_exact(data, "document")
    tagged = isinstance(item, cbor2.CBORTag)
    if tagged:
        if item.tag != COSE_SIGN1_TAG:
            raise _malformed(f"CBOR tag {item.tag} is not COSE_Sign1 (18)")
        item = item.value
    if not (isinstance(item, (list, tuple)) and len(item) == 4):  # cbor2 may decode tuples
        raise _malformed("not a COSE_Sign1 array of four")
    protected, unprotected, payload, signature = item
    if not all(isinstance(x, bytes) for x in (protected, payload, signature)):
        raise _malformed("COSE_Sign1 fields have the wrong types")
    if unprotected != {}:
        raise _malformed("unexpected unprotected COSE header")  # AWS sends none; nothing unsigned may ride along
    # Only the canonical encoding is accepted, so no unsigned framing byte can vary.
    canonical = cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, item) if tagged else item)
    if canonical != data:
        raise _malformed("COSE_Sign1 framing is not canonical CBOR")
    header = _decode_exact(protected, "protected header")
    if header != {1: COSE_ALG_ES384}:
        raise VerificationError(Reason.UNSUPPORTED, f"Nitro document: protected header {header!r} is not ES384")
    if len(signature) != 96:
        raise _malformed(f"ES384 signature is {len(signature)} bytes, expected 96")
    return protected, payload, signature


def _payload(payload: bytes) -> dict[str, Any]:
    doc = _decode_exact(payload, "payload")
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise _malformed("payload is not a map with text keys")
    unknown = set(doc) - set(_REQUIRED) - set(_OPTIONAL)
    missing = set(_REQUIRED) - set(doc)
    if unknown or missing:
        raise _malformed(f"payload keys: missing {sorted(missing)}, unknown {sorted(unknown)}")
    if not isinstance(doc["module_id"], str) or not doc["module_id"]:
        raise _malformed("module_id must be a non-empty string")
    if doc["digest"] != "SHA384":
        raise _malformed(f"digest {doc['digest']!r} is not SHA384")
    stamp = doc["timestamp"]
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 < stamp < MAX_TIMESTAMP_MS:
        raise _malformed("timestamp must be a positive integer (ms since the epoch) before year 10000")
    pcrs = doc["pcrs"]
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= 32:
        raise _malformed("pcrs must be a map of 1..32 entries")
    for index, value in pcrs.items():
        if not (isinstance(index, int) and 0 <= index < 32 and isinstance(value, bytes) and len(value) in PCR_SIZES):
            raise _malformed(f"PCR entry {index!r} is malformed")
    if not isinstance(doc["certificate"], bytes) or not 1 <= len(doc["certificate"]) <= 1024:
        raise _malformed("certificate must be 1..1024 bytes")
    bundle = doc["cabundle"]
    if not isinstance(bundle, (list, tuple)) or not 1 <= len(bundle) <= MAX_CHAIN:
        raise _malformed(f"cabundle must hold 1..{MAX_CHAIN} certificates")
    if not all(isinstance(c, bytes) and 1 <= len(c) <= 1024 for c in bundle):
        raise _malformed("cabundle entries must be 1..1024 bytes")
    for key, limit in _OPTIONAL_MAX.items():
        value = doc.get(key)
        if value is not None and not (isinstance(value, bytes) and len(value) <= limit):
            raise _malformed(f"{key} must be null or at most {limit} bytes")
    return doc


def verify_nitro(document: bytes, *, now: datetime, root_der: bytes | None = None) -> Claims:
    """Verify a Nitro attestation document at ``now``; ``root_der`` replaces the root (tests only)."""
    require_aware(now)
    root = aws_nitro_root_der() if root_der is None else root_der
    protected, payload, signature = parse_cose_sign1(document)
    doc = _payload(payload)
    claims = Claims(technology="nitro", version=1, product="AWS Nitro Enclaves", signing_key="AWS Nitro")
    pcrs: dict[int, bytes] = doc["pcrs"]
    for index in sorted(pcrs):
        claims.measurements[f"pcr{index}"] = pcrs[index]
    # A debug-mode enclave reports all-zero PCR0..2 (the image, kernel and application measures).
    claims.debug = all(not any(pcrs.get(i, b"")) for i in (0, 1, 2))
    claims.report_data = doc.get("user_data")
    claims.platform_id["module_id"] = doc["module_id"]
    stamp = datetime.fromtimestamp(doc["timestamp"] / 1000, UTC)
    claims.details["timestamp"] = stamp.isoformat()
    for name in ("nonce", "public_key"):
        if doc.get(name) is not None:
            claims.details[name] = doc[name]
    claims.passed("COSE_Sign1 (ES384) document parsed")

    certs = [_load(der, "cabundle entry", claims) for der in doc["cabundle"]]
    leaf = _load(doc["certificate"], "certificate", claims)
    if doc["cabundle"][0] != root:
        raise VerificationError(
            Reason.UNTRUSTED_ROOT, "cabundle does not start with the AWS Nitro root G1", claims=claims
        )
    chain = [*certs, leaf]
    for parent, child in itertools.pairwise(chain):
        label = child.subject.rfc4514_string()
        if not _is_ca(parent):
            raise VerificationError(
                Reason.CERTIFICATE_SIGNATURE, f"{parent.subject.rfc4514_string()} is not a CA", claims=claims
            )
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(
                Reason.CERTIFICATE_SIGNATURE, f"{label} is not signed by its predecessor in cabundle", claims=claims
            ) from exc
    claims.passed(f"certificate chain of {len(chain)} verified up to the built-in AWS Nitro root G1")
    for cert in chain:
        check_validity(cert, now, cert.subject.rfc4514_string(), claims)
    claims.passed(f"every certificate valid at {now.isoformat()}")
    if stamp > now + timedelta(minutes=5):
        raise VerificationError(
            Reason.DOCUMENT_TIME,
            f"document timestamp {stamp.isoformat()} is after now ({now.isoformat()})",
            claims=claims,
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(Reason.MALFORMED, "Nitro leaf key is not ECDSA P-384", claims=claims)
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), to_sign, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as exc:
        raise VerificationError(
            Reason.EVIDENCE_SIGNATURE, "COSE_Sign1 signature does not verify with the leaf key", claims=claims
        ) from exc
    claims.passed("COSE_Sign1 signature (ES384) verifies with the leaf certificate")
    claims.verified = True
    return claims


def _load(der: bytes, what: str, claims: Claims) -> x509.Certificate:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged serial number warns before it fails
            cert = x509.load_der_x509_certificate(der)
    except CERT_ERRORS as exc:
        raise _malformed(f"{what} is not a DER certificate", claims) from exc
    try:
        return parsed(cert, f"Nitro {what}")
    except VerificationError as exc:
        exc.claims = claims
        raise


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, *CERT_ERRORS):
        return False
