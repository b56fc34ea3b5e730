"""AMD VCEK / VLEK certificates: their extensions, their chain to an ARK, and AMD CRLs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from motte.shared.der import TAG_IA5STRING, TAG_OCTET_STRING, DerError, read_integer, read_one, read_string
from motte.tenant.attest.amd_roots import (
    PSS,
    AmdTrust,
    cached_pss_link,
    cert_der,
    common_name,
    pss_signed_by,
)
from motte.tenant.attest.claims import Claims, Reason, VerificationError
from motte.tenant.attest.x509util import CERT_ERRORS, check_validity

AMD_OID = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION = AMD_OID + "1"
OID_PRODUCT_NAME = AMD_OID + "2"
OID_SPL_PREFIX = AMD_OID + "3."
OID_HWID = AMD_OID + "4"
OID_CSP_ID = AMD_OID + "5"

# SPL extension number -> TCB component name (the byte position is decided by snp.tcb_components).
SPL_NAMES = {1: "bootloader", 2: "tee", 3: "snp", 8: "microcode", 9: "fmc"}
HWID_SIZES = (64, 8)  # 8 bytes on Turin


@dataclass(frozen=True)
class VekExtensions:
    struct_version: int | None = None
    product_name: str | None = None
    spl: dict[int, int] = field(default_factory=dict)
    hwid: bytes | None = None
    csp_id: str | None = None

    @property
    def product_line(self) -> str | None:
        """'Milan-B0' -> 'Milan' (the stepping suffix does not change the keys)."""
        return None if self.product_name is None else self.product_name.split("-", 1)[0]

    def tcb(self) -> dict[str, int]:
        return {SPL_NAMES[n]: v for n, v in self.spl.items() if n in SPL_NAMES}


def parse_vek_extensions(cert: x509.Certificate) -> VekExtensions:
    try:
        extensions = list(cert.extensions)
    except CERT_ERRORS as exc:
        raise VerificationError(Reason.MALFORMED, f"VEK certificate extensions: {exc}") from exc
    try:
        return _read_vek_extensions(extensions)
    except DerError as exc:
        raise VerificationError(Reason.MALFORMED, exc.message) from exc


def _read_vek_extensions(extensions: Sequence[x509.Extension[x509.ExtensionType]]) -> VekExtensions:
    struct_version = product = hwid = csp = None
    spl: dict[int, int] = {}
    for ext in extensions:
        oid = ext.oid.dotted_string
        if not oid.startswith(AMD_OID) or not isinstance(ext.value, x509.UnrecognizedExtension):
            continue
        value = ext.value.value
        if oid == OID_STRUCT_VERSION:
            struct_version = read_integer(value, "VEK structVersion")
        elif oid == OID_PRODUCT_NAME:
            product = read_string(value, TAG_IA5STRING, "VEK productName1")
        elif oid.startswith(OID_SPL_PREFIX):
            suffix = oid[len(OID_SPL_PREFIX) :]
            if suffix.isdigit():
                level = read_integer(value, f"VEK SPL extension {oid}")
                if level > 0xFF:
                    raise VerificationError(Reason.MALFORMED, f"VEK SPL extension {oid} = {level} > 255")
                spl[int(suffix)] = level
        elif oid == OID_HWID:
            hwid = _hwid(value)
        elif oid == OID_CSP_ID:
            csp = read_string(value, TAG_IA5STRING, "VLEK cspId")
    return VekExtensions(struct_version, product, spl, hwid, csp)


def _hwid(value: bytes) -> bytes:
    """The hwID comes raw (64 bytes; 8 on Turin) or wrapped in a DER OCTET STRING."""
    if len(value) in HWID_SIZES:
        return value
    inner = read_one(value, TAG_OCTET_STRING, "VCEK hwID")
    if len(inner) not in HWID_SIZES:
        raise VerificationError(Reason.MALFORMED, f"VCEK hwID is {len(inner)} bytes, expected 64 or 8")
    return inner


@dataclass(frozen=True)
class VekChain:
    product: str
    kind: str  # "VCEK" or "VLEK"
    vek: x509.Certificate
    intermediate: x509.Certificate
    ark: x509.Certificate
    public_key: ec.EllipticCurvePublicKey


def vek_kind(cert: x509.Certificate) -> str | None:
    cn = common_name(cert.subject)
    return {"SEV-VCEK": "VCEK", "SEV-VLEK": "VLEK"}.get(cn)


def verify_vek_chain(
    vek: x509.Certificate,
    supplied: Sequence[x509.Certificate],
    now: datetime,
    trust: AmdTrust,
    claims: Claims,
) -> VekChain:
    """Check VEK <- ASK/ASVK <- ARK with RSA-PSS and the validity of each at ``now``."""
    kind = vek_kind(vek)
    if kind is None:
        raise VerificationError(Reason.MALFORMED, f"not a VCEK/VLEK: CN={common_name(vek.subject)!r}", claims=claims)
    issuer_cn = common_name(vek.issuer)
    prefix = "SEV-VLEK-" if kind == "VLEK" else "SEV-"
    product = issuer_cn[len(prefix) :] if issuer_cn.startswith(prefix) else ""
    roots = trust.products.get(product)
    if roots is None:  # a VCEK under "SEV-VLEK-Milan" reads as product "VLEK-Milan": unknown too
        raise VerificationError(
            Reason.UNTRUSTED_ROOT, f"{kind} issuer CN={issuer_cn!r} is not a known AMD key", claims=claims
        )
    builtin = roots.asvk if kind == "VLEK" else roots.ask
    if builtin is None:
        raise VerificationError(Reason.UNTRUSTED_ROOT, f"no ASVK known for {product}", claims=claims)
    inter_label = f"{issuer_cn} ({'ASVK' if kind == 'VLEK' else 'ASK'})"

    # A supplied ARK must be the built-in one: the trust anchor never comes from the evidence.
    for cert in supplied:
        if common_name(cert.subject) == f"ARK-{product}" and cert_der(cert) != roots.ark_der:
            raise VerificationError(
                Reason.UNTRUSTED_ROOT, f"supplied ARK-{product} differs from the built-in root", claims=claims
            )
    candidates = [builtin]
    for cert in supplied:
        if cert.subject == vek.issuer and cert_der(cert) != cert_der(builtin):
            if not cached_pss_link(cert_der(cert), roots.ark_der):
                raise VerificationError(
                    Reason.CERTIFICATE_SIGNATURE,
                    f"supplied {inter_label} is not signed by ARK-{product}",
                    claims=claims,
                )
            candidates.insert(0, cert)
    claims.passed(f"ARK-{product} is the built-in root; {inter_label} signed by it (RSA-PSS)")
    intermediate = next((c for c in candidates if pss_signed_by(vek, c)), None)
    if intermediate is None:
        raise VerificationError(Reason.CERTIFICATE_SIGNATURE, f"{kind} is not signed by {inter_label}", claims=claims)
    claims.passed(f"{kind} signed by {inter_label} (RSA-PSS SHA-384)")
    for cert, label in ((vek, kind), (intermediate, inter_label), (roots.ark, f"ARK-{product}")):
        check_validity(cert, now, label, claims)
    claims.passed(f"{kind}, {issuer_cn} and ARK-{product} valid at {now.isoformat()}")
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(Reason.MALFORMED, f"{kind} key is not ECDSA P-384", claims=claims)
    return VekChain(product, kind, vek, intermediate, roots.ark, key)


def check_crls(
    crls: Sequence[x509.CertificateRevocationList],
    chain: VekChain,
    now: datetime,
    trust: AmdTrust,
    claims: Claims,
) -> None:
    """Each CRL must be signed by a known ARK and current; the chain's certs must not be on it."""
    for crl in crls:
        issuer_cn = common_name(crl.issuer)
        roots = trust.products.get(issuer_cn[4:]) if issuer_cn.startswith("ARK-") else None
        if roots is None or crl.issuer != roots.ark.subject:
            raise VerificationError(Reason.CRL_INVALID, f"CRL issuer CN={issuer_cn!r} is not an AMD ARK", claims=claims)
        if roots.product != chain.product:
            claims.passed(f"CRL of ARK-{roots.product} does not cover a {chain.product} chain: skipped")
            continue
        key = roots.ark.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise VerificationError(Reason.CRL_INVALID, "ARK key is not RSA", claims=claims)
        try:
            key.verify(crl.signature, crl.tbs_certlist_bytes, PSS, hashes.SHA384())
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise VerificationError(
                Reason.CRL_INVALID, f"CRL is not signed by ARK-{chain.product}", claims=claims
            ) from exc
        last, nxt = crl.last_update_utc, crl.next_update_utc
        if now < last or nxt is None or now > nxt:
            window = f"{last.isoformat()} .. {nxt.isoformat() if nxt else 'unbounded'}"
            raise VerificationError(
                Reason.CRL_INVALID,
                f"CRL of ARK-{chain.product} is not current at {now.isoformat()} ({window})",
                claims=claims,
            )
        for cert, label in ((chain.intermediate, common_name(chain.intermediate.subject)), (chain.vek, chain.kind)):
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise VerificationError(
                    Reason.CERTIFICATE_REVOKED,
                    f"{label} (serial {cert.serial_number:#x}) is revoked by ARK-{chain.product}'s CRL",
                    claims=claims,
                )
        claims.passed(f"CRL of ARK-{chain.product} signed, current, and revokes nothing in the chain")
