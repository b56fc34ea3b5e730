"""The AMD trust store: per product line, the ARK (root) and the ASK / ASVK it signed.

The built-in store holds Milan, Genoa and Turin and is checked once per process (ARK self-signature,
ASK <- ARK, ASVK <- ARK). A different store can be passed explicitly to the verifier, which is how
tests use test-only roots; nothing in production code builds one from outside input.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from motte.shared.der import TAG_BIT_STRING, TAG_CONTEXT_0, TAG_INTEGER, TAG_SEQUENCE, DerError, read_outer
from motte.tenant.attest.roots import read_root

PRODUCTS = ("Milan", "Genoa", "Turin")

# SHA-256 of the DER of each built-in ARK: the root of trust, pinned in code as well as in the file.
ARK_SHA256 = {
    "Milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "Genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "Turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}

# AMD signs its certificates with RSASSA-PSS, SHA-384, MGF1(SHA-384), salt 48.
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
RSASSA_PSS_OID = x509.ObjectIdentifier("1.2.840.113549.1.1.10")


class TrustStoreError(ValueError):
    """A trust store was built from certificates that do not form AMD's structure."""


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def signature_fields_consistent(cert_der: bytes) -> bool:
    """Whether the certificate's unsigned fields hold no slack: the outer signatureAlgorithm equals
    the signed one inside the TBS (RFC 5280 requires it), the signature BIT STRING has no unused
    bits, and nothing follows it. Only the TBS is signed, so a verifier that uses fixed algorithm
    parameters must check this itself or accept certificates altered outside the signature.
    """
    try:
        certificate = read_outer(cert_der, TAG_SEQUENCE, "Certificate", "certificate")
        tbs = certificate.enter(TAG_SEQUENCE, "tbsCertificate")
        outer_algorithm = certificate.read(TAG_SEQUENCE, "signatureAlgorithm").encoded
        signature = certificate.read(TAG_BIT_STRING, "signatureValue").content
        certificate.done()
        if tbs.read(name="version or serialNumber").tag == TAG_CONTEXT_0:  # [0] EXPLICIT version
            tbs.read(TAG_INTEGER, "serialNumber")
        inner_algorithm = tbs.read(TAG_SEQUENCE, "signature").encoded
    except DerError:
        return False
    return inner_algorithm == outer_algorithm and signature[:1] == b"\0"


def pss_signed_by(subject: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s RSA key made ``subject``'s RSASSA-PSS signature (names must chain too).

    AMD certificates carry no Authority Key Identifier, and cryptography's
    ``verify_directly_issued_by`` does not do PSS, so the link is checked here by hand.
    """
    if subject.issuer != issuer.subject or subject.signature_algorithm_oid != RSASSA_PSS_OID:
        return False
    if not signature_fields_consistent(cert_der(subject)):
        return False  # the PSS parameters used below are then pinned by the signed copy
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(subject.signature, subject.tbs_certificate_bytes, PSS, hashes.SHA384())
    except (InvalidSignature, ValueError, TypeError):  # a wrong or a malformed signature: both mean no
        return False
    return True


@functools.lru_cache(maxsize=64)
def cached_pss_link(subject_der: bytes, issuer_der: bytes) -> bool:
    """``pss_signed_by`` memoised on the exact certificate bytes (used for CA-to-CA links only)."""
    return pss_signed_by(x509.load_der_x509_certificate(subject_der), x509.load_der_x509_certificate(issuer_der))


@dataclass(frozen=True)
class ProductRoots:
    product: str
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate | None
    ark_der: bytes


@dataclass(frozen=True)
class AmdTrust:
    products: Mapping[str, ProductRoots]

    @classmethod
    def from_certs(cls, certs: Iterable[x509.Certificate]) -> AmdTrust:
        """Group certificates by product (subject CN ARK-<P>, SEV-<P>, SEV-VLEK-<P>) and check them."""
        arks: dict[str, x509.Certificate] = {}
        asks: dict[str, x509.Certificate] = {}
        asvks: dict[str, x509.Certificate] = {}
        for cert in certs:
            cn = common_name(cert.subject)
            if cn.startswith("ARK-"):
                arks[cn[4:]] = cert
            elif cn.startswith("SEV-VLEK-"):
                asvks[cn[9:]] = cert
            elif cn.startswith("SEV-"):
                asks[cn[4:]] = cert
            else:
                raise TrustStoreError(f"not an AMD CA certificate: CN={cn!r}")
        products: dict[str, ProductRoots] = {}
        for product, ark in arks.items():
            ask = asks.get(product)
            if ask is None:
                raise TrustStoreError(f"trust store has ARK-{product} but no SEV-{product} (ASK)")
            if not pss_signed_by(ark, ark):
                raise TrustStoreError(f"ARK-{product} is not self-signed")
            asvk = asvks.get(product)
            for inter in (ask, asvk):
                if inter is not None and not pss_signed_by(inter, ark):
                    raise TrustStoreError(f"{common_name(inter.subject)} is not signed by ARK-{product}")
            products[product] = ProductRoots(product, ark, ask, asvk, cert_der(ark))
        return cls(products)


@functools.lru_cache(maxsize=1)
def builtin_amd_trust() -> AmdTrust:
    certs: list[x509.Certificate] = []
    for product in PRODUCTS:
        certs.extend(x509.load_pem_x509_certificates(read_root(f"amd_{product.lower()}.pem")))
    trust = AmdTrust.from_certs(certs)
    for product, pin in ARK_SHA256.items():
        if hashlib.sha256(trust.products[product].ark_der).hexdigest() != pin:
            raise TrustStoreError(f"built-in ARK-{product} does not match its pinned SHA-256")
    return trust
