"""The keep's TLS identity: a key pair made inside the keep at start, and its certificate chain.

The private key never leaves the keep. When the workload config names a Steward, the keep sends
it a CSR carrying its evidence and serves TLS with the ``[CA, issued]`` chain it gets back
(:meth:`motte.keep.net.setup.NetworkSetup.use_steward`). Without one the certificate is
self-signed (:func:`self_signed_identity`), and it proves nothing about the keep: a client that
accepts it has only an encrypted channel to *something*.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: Outside a TEE the keep key is P-256 (SNP keeps use P-384: docs/threat-model.md, "What the evidence must bind").
CURVE = ec.SECP256R1
SELF_SIGNED_CN = "motte keep (self-signed, unattested)"
VALIDITY = datetime.timedelta(days=1)  # a keep's identity lives as long as the keep
CLOCK_SKEW = datetime.timedelta(minutes=5)


class KeepIdentity(NamedTuple):
    """What a TLS server in the keep presents: the chain (leaf first) and its private key."""

    key: ec.EllipticCurvePrivateKey
    chain: tuple[x509.Certificate, ...]

    def spki_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo: what attestation report data binds (hashed)."""
        return self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def chain_pem(self) -> bytes:
        return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in self.chain)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(CURVE())


def self_signed_identity(key: ec.EllipticCurvePrivateKey | None = None,
                         now: datetime.datetime | None = None) -> KeepIdentity:
    """A fresh key (unless given) and a self-signed certificate for it.

    The names (``localhost``, loopback addresses) only let ordinary clients complete a hostname
    check in development; the certificate is marked unattested in its subject.
    """
    key = key or generate_key()
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_CN)])
    public = key.public_key()
    # The serial is derived from the key, so it is unique per keep without another random draw.
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    serial = int.from_bytes(hashlib.sha256(spki).digest()[:16], "big") >> 1
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(serial or 1)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return KeepIdentity(key, (certificate,))
