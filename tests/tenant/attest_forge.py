"""Test-only AMD hierarchy: an ARK/ASK/ASVK per product, VCEKs/VLEKs, signed SNP reports, CRLs.

No real Turin report, v5 report, HCL report or AMD CRL is public, so these paths are exercised with
keys made here. The verifier accepts them only when a test passes ``trust=fake.trust()``.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from motte.tenant.attest.amd_roots import AmdTrust

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
FAR = datetime(2045, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 12, 6, tzinfo=UTC)
OID = "1.3.6.1.4.1.3704.1."


def amd_name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COMMON_NAME, cn),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
            x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _cert(
    subject: str,
    issuer: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    signer: rsa.RSAPrivateKey,
    *,
    serial: int = 1,
    not_before: datetime = EPOCH,
    not_after: datetime = FAR,
    extensions: list[x509.ExtensionType] | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(amd_name(subject))
        .issuer_name(amd_name(issuer))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def _ext(suffix: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(OID + suffix), value)


@dataclass
class FakeAmd:
    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    asvk_key: rsa.RSAPrivateKey
    asvk: x509.Certificate

    def trust(self) -> AmdTrust:
        return AmdTrust.from_certs([self.ark, self.ask, self.asvk])

    def vek(
        self,
        kind: str = "VCEK",
        *,
        tcb: dict[str, int],
        hwid: bytes | None = None,
        wrap_hwid: bool = False,
        product_name: str | None = None,
        not_before: datetime = EPOCH,
        not_after: datetime = FAR,
        signer: rsa.RSAPrivateKey | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP384R1())
        spl = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8", "fmc": "3.9"}
        exts: list[x509.ExtensionType] = [
            _ext("1", _der_int(1 if self.product == "Turin" else 0)),
            _ext("2", _der_ia5(product_name or self.product)),
        ]
        exts += [_ext(spl[name], _der_int(v)) for name, v in tcb.items()]
        if hwid is not None:
            exts.append(_ext("4", bytes([0x04, len(hwid)]) + hwid if wrap_hwid else hwid))
        issuer = f"SEV-VLEK-{self.product}" if kind == "VLEK" else f"SEV-{self.product}"
        default_signer = self.asvk_key if kind == "VLEK" else self.ask_key
        cert = _cert(
            f"SEV-{kind}",
            issuer,
            key.public_key(),
            signer or default_signer,
            serial=0x1234,
            not_before=not_before,
            not_after=not_after,
            extensions=exts,
        )
        return key, cert

    def crl(
        self,
        revoked: list[int],
        *,
        this_update: datetime = EPOCH,
        next_update: datetime | None = FAR,
        signer: rsa.RSAPrivateKey | None = None,
    ) -> bytes:
        builder = x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject).last_update(this_update)
        if next_update is not None:
            builder = builder.next_update(next_update)
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(this_update).build()
            )
        return builder.sign(signer or self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(Encoding.DER)


@functools.cache
def fake_amd(product: str) -> FakeAmd:
    keys = [rsa.generate_private_key(65537, 2048) for _ in range(3)]
    ark = _cert(f"ARK-{product}", f"ARK-{product}", keys[0].public_key(), keys[0])
    ask = _cert(f"SEV-{product}", f"ARK-{product}", keys[1].public_key(), keys[0], serial=2)
    asvk = _cert(f"SEV-VLEK-{product}", f"ARK-{product}", keys[2].public_key(), keys[0], serial=3)
    return FakeAmd(product, keys[0], ark, keys[1], ask, keys[2], asvk)


def tcb_bytes(product: str, tcb: dict[str, int]) -> bytes:
    layout = (
        {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7}
        if product == "Turin"
        else {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7}
    )
    out = bytearray(8)
    for name, value in tcb.items():
        out[layout[name]] = value
    return bytes(out)


def build_report(
    key: ec.EllipticCurvePrivateKey,
    *,
    version: int = 2,
    policy: int = 0x30000,
    signing_key: int = 0,
    mask_chip_key: bool = False,
    reported_tcb: bytes = bytes(8),
    chip_id: bytes = bytes(64),
    cpuid: tuple[int, int, int] | None = None,
    measurement: bytes = b"\x11" * 48,
    report_data: bytes = b"\x22" * 64,
    vmpl: int = 0,
    mit_vectors: tuple[int, int] = (0, 0),
) -> bytes:
    r = bytearray(0x4A0)
    struct.pack_into("<IIQ", r, 0, version, 7, policy)
    struct.pack_into("<II", r, 0x30, vmpl, 1)
    r[0x38:0x40] = reported_tcb
    struct.pack_into("<I", r, 0x48, (signing_key << 2) | (2 if mask_chip_key else 0))
    r[0x50:0x90] = report_data
    r[0x90:0xC0] = measurement
    r[0x180:0x188] = reported_tcb
    if cpuid is not None:
        r[0x188:0x18B] = bytes(cpuid)
    r[0x1A0:0x1E0] = chip_id
    r[0x1E0:0x1E8] = reported_tcb
    r[0x1E8:0x1EB] = bytes([40, 55, 1])
    r[0x1F0:0x1F8] = reported_tcb
    if version >= 5:
        struct.pack_into("<QQ", r, 0x1F8, *mit_vectors)
    return sign_report(bytes(r), key)


def sign_report(report: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    r = bytearray(report)
    sig_r, sig_s = decode_dss_signature(key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    r[0x2A0:0x2E8] = sig_r.to_bytes(72, "little")
    r[0x2E8:0x330] = sig_s.to_bytes(72, "little")
    return bytes(r)


def hcl_report_data(runtime: bytes, hash_name: str = "sha256") -> bytes:
    digest = hashlib.new(hash_name, runtime).digest()
    return digest + bytes(64 - len(digest))


def wrap_hcl(report: bytes, runtime: bytes, *, hash_type: int = 1, padding_bytes: int = 0) -> bytes:
    header = b"HCLA" + struct.pack("<IIII", 2, 0x4A0 + 20 + len(runtime), 2, 0) + bytes(12)
    igvm = struct.pack("<IIIII", 20 + len(runtime), 1, 2, hash_type, len(runtime))
    return header + report + igvm + runtime + bytes(padding_bytes)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def later(days: int) -> datetime:
    return NOW + timedelta(days=days)
