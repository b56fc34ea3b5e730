"""Certificate and CRL loading, and validity-window checks, with typed errors."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from motte.tenant.attest.claims import Claims, Reason, VerificationError

# What cryptography raises on a corrupt certificate or CRL, depending on which field is damaged.
CERT_ERRORS = (ValueError, TypeError, x509.InvalidVersion, x509.DuplicateExtension, UnsupportedAlgorithm)

PEM_CERT = b"-----BEGIN CERTIFICATE-----"
PEM_CRL = b"-----BEGIN X509 CRL-----"


def require_aware(now: datetime) -> datetime:
    """Every check takes "now" from the caller; a naive time would silently mean local time."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now


def parsed(cert: x509.Certificate, what: str) -> x509.Certificate:
    """Parse every field the verifiers read, now: ``cryptography`` decodes them lazily, so a
    corrupt name or key would otherwise surface later as a bare ValueError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a country name of the wrong length
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            _ = (cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
            _ = (cert.signature, cert.tbs_certificate_bytes, cert.signature_algorithm_oid)
            cert.public_key()
    except CERT_ERRORS as exc:
        raise VerificationError(Reason.MALFORMED, f"{what}: {exc}") from exc
    return cert


def load_certificates(blobs: Iterable[bytes]) -> list[x509.Certificate]:
    """Each blob is one DER certificate or PEM text holding one or more certificates."""
    out: list[x509.Certificate] = []
    for i, blob in enumerate(blobs):
        try:
            # AMD VCEKs/VLEKs have serial number 0, which cryptography warns about; it is expected.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if PEM_CERT in blob:
                    out.extend(x509.load_pem_x509_certificates(blob))
                else:
                    out.append(x509.load_der_x509_certificate(blob))
        except CERT_ERRORS as exc:
            raise VerificationError(
                Reason.MALFORMED, f"certificate input #{i + 1} is not a certificate: {exc}"
            ) from exc
    return [parsed(cert, "certificate") for cert in out]


def load_crls(blobs: Iterable[bytes]) -> list[x509.CertificateRevocationList]:
    out: list[x509.CertificateRevocationList] = []
    for i, blob in enumerate(blobs):
        try:
            if PEM_CRL in blob:
                out.append(x509.load_pem_x509_crl(blob))
            else:
                out.append(x509.load_der_x509_crl(blob))
            crl = out[-1]
            _ = (crl.issuer.rfc4514_string(), crl.last_update_utc, crl.next_update_utc, crl.signature)
            _ = crl.tbs_certlist_bytes
        except CERT_ERRORS as exc:
            raise VerificationError(Reason.CRL_INVALID, f"CRL input #{i + 1} is not a CRL: {exc}") from exc
    return out


def check_validity(cert: x509.Certificate, now: datetime, label: str, claims: Claims) -> None:
    before, after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < before:
        raise VerificationError(
            Reason.CERTIFICATE_NOT_YET_VALID,
            f"{label} is not valid before {before.isoformat()} (now is {now.isoformat()})",
            claims=claims,
        )
    if now > after:
        raise VerificationError(
            Reason.CERTIFICATE_EXPIRED,
            f"{label} expired at {after.isoformat()} (now is {now.isoformat()})",
            claims=claims,
        )
