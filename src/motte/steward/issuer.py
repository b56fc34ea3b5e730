"""The Steward's certificate authority and the short-lived certificates it issues to keeps.

An issued certificate certifies the keep's key (from the CSR) and says what was attested, in
motte's extensions (see :mod:`motte.shared.steward_protocol`), followed by the CSR's binding
extensions, copied as they are (the workload and launch digests; :mod:`motte.shared.binding`).
It is a TLS server and client certificate, valid from five minutes before issuance (clients'
clocks drift) for the policy's lifetime, never beyond the CA's own expiry.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from motte.outside.user_files import read_user_file
from motte.shared.der import der_octet_string, der_utf8
from motte.shared.errors import MotteError
from motte.shared.steward_protocol import (
    ATTESTED_CLAIMS_OID,
    ATTESTED_MEASUREMENT_OID,
    ATTESTED_TECHNOLOGY_OID,
    EVIDENCE_DIGEST_OID,
)
from motte.steward.check import Attested

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
BACKDATE = timedelta(minutes=5)
MAX_FILE = 1 << 20


class CaError(MotteError):
    """The CA key or certificate cannot be used."""


class CertificateAuthority:
    def __init__(self, key: CaKey, cert: x509.Certificate) -> None:
        if cert.public_key() != key.public_key():
            raise CaError("the CA key does not belong to the CA certificate")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaError("the CA certificate is not a CA (basicConstraints cA is not set)")
        self.key = key
        self.cert = cert
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self._hash = _signature_hash(key)
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> CertificateAuthority:
        key_data = read_user_file(key_path, what="CA key file", limit=MAX_FILE, error=CaError)
        cert_data = read_user_file(cert_path, what="CA certificate file", limit=MAX_FILE, error=CaError)
        try:
            key = (
                serialization.load_pem_private_key(key_data, None)
                if b"-----BEGIN" in key_data
                else serialization.load_der_private_key(key_data, None)
            )
        except (ValueError, TypeError) as exc:
            raise CaError(f"{key_path}: not an unencrypted PEM or DER private key ({exc})") from exc
        try:
            cert = (
                x509.load_pem_x509_certificate(cert_data)
                if b"-----BEGIN" in cert_data
                else x509.load_der_x509_certificate(cert_data)
            )
        except ValueError as exc:
            raise CaError(f"{cert_path}: not a PEM or DER certificate ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise CaError(f"{key_path}: the CA key must be EC, RSA or Ed25519")
        return cls(key, cert)

    def issue(
        self, attested: Attested, *, now: datetime, lifetime: timedelta, dns_names: tuple[str, ...] = ()
    ) -> x509.Certificate:
        if now < self.cert.not_valid_before_utc:
            raise CaError("the Steward's CA certificate is not valid yet", hint="check the clock")
        not_after = min(now + lifetime, self.cert.not_valid_after_utc)
        if not_after <= now:
            raise CaError("the Steward's CA certificate has expired", hint="issue a new CA certificate")
        key_id = hashlib.sha256(attested.spki).hexdigest()[:16]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"motte keep {key_id}")]))
            .issuer_name(self.cert.subject)
            .public_key(attested.public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - BACKDATE, self.cert.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(attested.public_key), critical=False)
            .add_extension(self._aki, critical=False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
            )
        for oid, value in _attestation_extensions(attested):
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
            )
        return builder.sign(self.key, self._hash)


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _attestation_extensions(attested: Attested) -> list[tuple[str, bytes]]:
    out = [(ATTESTED_TECHNOLOGY_OID, der_utf8(attested.technology))]
    if attested.measurement is not None:
        out.append((ATTESTED_MEASUREMENT_OID, der_octet_string(attested.measurement)))
    out.append((EVIDENCE_DIGEST_OID, der_octet_string(bytes.fromhex(attested.evidence_sha256))))
    claims = json.dumps(attested.certified_claims(), sort_keys=True, separators=(",", ":"))
    out.append((ATTESTED_CLAIMS_OID, der_utf8(claims)))
    if attested.keep_claims is not None:
        out += attested.keep_claims.extensions()
    return out


def _signature_hash(key: CaKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def new_ca(common_name: str, *, now: datetime, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh P-256 CA. (P-256 as Enarx's Steward: it signs short-lived certificates, often.)"""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_ca(directory: Path, key: CaKey, cert: x509.Certificate) -> tuple[Path, Path]:
    """Write ``steward-ca.key`` (mode 0600, created exclusively) and ``steward-ca.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "steward-ca.key", directory / "steward-ca.pem"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise CaError(f"{key_path} exists already; not overwriting a CA key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path

