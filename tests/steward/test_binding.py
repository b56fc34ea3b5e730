"""What a keep binds besides its key: the claims' DER, their strict reading, and the report data of a
CSR and of a provisioning answer, pinned by vectors written out by hand (hashlib and literal DER)."""

from __future__ import annotations

import hashlib

import pytest

from motte.shared.binding import (
    LAUNCH_DIGEST_OID,
    TRUST_ANCHORS_OID,
    WORKLOAD_DIGEST_OID,
    KeepClaims,
    csr_report_data,
    provision_report_data,
)
from motte.shared.control import LaunchTerms
from motte.shared.der import DerError, decode_oid, der_oid
from motte.shared.enarx_config import FileSpec, WorkloadConfig
from motte.shared.steward_protocol import StewardProtocolError, key_binding

# A P-256 SubjectPublicKeyInfo (of the private scalar 7), DER.
SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d030107034200048e533b6fa0bf7b4625bb30667c01fb607ef9f8b8a80fef5b30"
    "0628703187b2a373eb1dbde03318366d069f83a6f5900053c73633cb041b21c55e1a86c1f400b4"
)
ARC = "060a2b0601040183c71e03"  # OBJECT IDENTIFIER 1.3.6.1.4.1.58270.3.x, x appended as one byte
CLAIMS = KeepClaims(b"\x11" * 32, b"\x22" * 32, (("steward", b"\x33" * 32),))
# Extension ::= SEQUENCE { extnID, extnValue OCTET STRING } of each claim, as the CSR carries them
WORKLOAD_EXT = "3030" + ARC + "01" + "0422" + "0420" + "11" * 32
LAUNCH_EXT = "3030" + ARC + "02" + "0422" + "0420" + "22" * 32
ANCHORS_VALUE = "302d" + "302b" + "0c07" + b"steward".hex() + "0420" + "33" * 32
ANCHORS_EXT = "303d" + ARC + "03" + "042f" + ANCHORS_VALUE


def test_oids_encode_as_der_and_back() -> None:
    assert der_oid("1.3.6.1.4.1.58270.3.0").hex() == ARC + "00"
    assert der_oid("1.3.6.1.4.1.58270.3.10").hex() == ARC + "0a"
    assert der_oid("1.2.840.113549.1.9.14").hex() == "06092a864886f70d01090e"
    assert der_oid("2.999.3").hex() == "0603883703"
    for dotted in ("1.3.6.1.4.1.58270.3.1", "2.5.29.17", "0.39", "2.999.128.16383.16384"):
        assert decode_oid(der_oid(dotted)[2:]) == dotted
    for bad in ("", "1", "3.1", "1.40", "1..2", "1.2.-3", "1.+2", " 1.2", "1.2.x", "1.٣"):
        with pytest.raises(DerError, match="not a dotted OID"):
            der_oid(bad)


def test_the_claims_extensions_byte_for_byte() -> None:
    assert CLAIMS.extensions() == [
        (WORKLOAD_DIGEST_OID, bytes.fromhex("0420" + "11" * 32)),
        (LAUNCH_DIGEST_OID, bytes.fromhex("0420" + "22" * 32)),
        (TRUST_ANCHORS_OID, bytes.fromhex(ANCHORS_VALUE)),
    ]
    assert [oid for oid, _ in KeepClaims(b"\x11" * 32, b"\x22" * 32).extensions()] == [
        "1.3.6.1.4.1.58270.3.1",
        "1.3.6.1.4.1.58270.3.2",
    ]  # no trust anchors: no trustAnchors extension
    assert KeepClaims.from_extensions(CLAIMS.extensions()) == CLAIMS
    assert KeepClaims.from_extensions([WORKLOAD, LAUNCH, ANCHORS]) == CLAIMS
    assert KeepClaims.from_extensions([]) is None


def test_csr_report_data_known_answer() -> None:
    extensions = CLAIMS.extensions()
    # SEQUENCE { OID .3.0, SubjectPublicKeyInfo, SEQUENCE OF Extension }: 12 + 91 + 3 + 163 = 269 bytes
    extension_list = "3081a3" + WORKLOAD_EXT + LAUNCH_EXT + ANCHORS_EXT
    bound = bytes.fromhex("3082010d" + ARC + "00") + SPKI + bytes.fromhex(extension_list)
    assert csr_report_data(SPKI, "tdx", extensions) == hashlib.sha256(bound).digest() + bytes(32)
    assert csr_report_data(SPKI, "snp", extensions) == hashlib.sha384(bound).digest() + bytes(16)
    assert csr_report_data(SPKI, "tdx", extensions).hex() == (
        "574bc03b2ba0ed1ce0c53fb644e335a78dad11f2419eeecf4a5b0ed72b1d90f3" + "00" * 32
    )
    assert csr_report_data(SPKI, "snp", extensions).hex() == (
        "47396c255ee6da08705379117a9fb60af53dd4c0bcdb029cf9967c8629afa68b"
        "6d3fe430fc928d6fdb257b9b64a04af3" + "00" * 16
    )
    # no binding extensions: Enarx's key binding, so an Enarx-shaped CSR still verifies
    for technology in ("snp", "tdx", "kvm"):
        assert csr_report_data(SPKI, technology, []) == key_binding(SPKI, technology)
    # every claim and the key count
    other = KeepClaims(b"\x11" * 32, b"\x23" * 32, CLAIMS.trust_anchors).extensions()
    assert csr_report_data(SPKI, "tdx", other) != csr_report_data(SPKI, "tdx", extensions)
    assert csr_report_data(SPKI, "tdx", extensions[:2]) != csr_report_data(SPKI, "tdx", extensions)


def test_provision_report_data_known_answer() -> None:
    nonce, exporter = b"\x44" * 32, b"\x55" * 32
    # SEQUENCE { OID .3.10, nonce OCTET STRING, SubjectPublicKeyInfo, exporter OCTET STRING }: 171 bytes
    bound = bytes.fromhex("3081ab" + ARC + "0a" + "0420" + "44" * 32) + SPKI + bytes.fromhex("0420" + "55" * 32)
    assert provision_report_data("tdx", nonce, SPKI, exporter) == hashlib.sha256(bound).digest() + bytes(32)
    assert provision_report_data("snp", nonce, SPKI, exporter).hex() == (
        "ed1a60461f09ea430ba0093b91ba8831c9d343b22f3ac6dde42f99cef0095fb1"
        "cea698cc4f9c153a94e686c6c20bd9a0" + "00" * 16
    )
    assert provision_report_data("tdx", nonce, SPKI, exporter).hex() == (
        "fcd0851fc7a3bda617436ea241a5b99b3ca8ae28faa95290db950aa62cbede78" + "00" * 32
    )
    with pytest.raises(StewardProtocolError, match="nonce must be 32 bytes, not 31"):
        provision_report_data("snp", nonce[1:], SPKI, exporter)
    with pytest.raises(StewardProtocolError, match="exporter value must be 32 bytes, not 48"):
        provision_report_data("snp", nonce, SPKI, exporter + bytes(16))


def _ext(oid_byte: str, value_hex: str) -> tuple[str, bytes]:
    return f"1.3.6.1.4.1.58270.3.{int(oid_byte, 16)}", bytes.fromhex(value_hex)


SHORT_ANCHOR = "3011" + "0c01" + "61" + "040c" + "33" * 12  # { "a", a 12-byte digest }
WORKLOAD, LAUNCH, ANCHORS = _ext("01", "0420" + "11" * 32), _ext("02", "0420" + "22" * 32), _ext("03", ANCHORS_VALUE)


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ([WORKLOAD], "lack launchDigest"),
        ([LAUNCH], "lack workloadDigest"),
        ([LAUNCH, WORKLOAD], "out of OID order"),
        ([WORKLOAD, ANCHORS, LAUNCH], "1.3.6.1.4.1.58270.3.2 is out of OID order"),
        ([WORKLOAD, WORKLOAD, LAUNCH], "appears twice"),
        ([WORKLOAD, LAUNCH, _ext("05", "0400")], "unknown binding extension 1.3.6.1.4.1.58270.3.5"),
        ([WORKLOAD, LAUNCH, _ext("04", "0400")], "expected UTF8String"),  # package: a UTF8String
        ([WORKLOAD, LAUNCH, ("1.3.6.1.4.1.58270.3.0", b"")], "unknown binding extension"),
        ([_ext("01", "0410" + "11" * 16), LAUNCH], "workloadDigest must be 32 bytes, not 16"),
        ([WORKLOAD, _ext("02", "0421" + "22" * 33)], "launchDigest must be 32 bytes, not 33"),
        ([_ext("01", "0420" + "11" * 32 + "00"), LAUNCH], "trailing"),
        ([_ext("01", "0c20" + "11" * 32), LAUNCH], "expected OCTET STRING"),
        ([_ext("01", "048020" + "11" * 32), LAUNCH], "indefinite length"),
        ([WORKLOAD, LAUNCH, _ext("03", "3000")], "trustAnchors is empty"),
        ([WORKLOAD, LAUNCH, _ext("03", "3013" + SHORT_ANCHOR)], "sha256 must be 32"),
        ([WORKLOAD, LAUNCH, _ext("03", "3026" + 2 * SHORT_ANCHOR)], "sha256 must be 32"),
        ([WORKLOAD, LAUNCH, _ext("03", "304e" + ("3025" + "0c01" + "62" + "0420" + "33" * 32)
                                   + ("3025" + "0c01" + "61" + "0420" + "33" * 32))], "sorted by use, each once"),
        ([WORKLOAD, LAUNCH, _ext("03", "304e" + 2 * ("3025" + "0c01" + "61" + "0420" + "33" * 32))], "each once"),
        ([WORKLOAD, LAUNCH, _ext("03", "3027" + "3025" + "0c01" + "ff" + "0420" + "33" * 32)], "not a valid UTF8"),
        ([WORKLOAD, LAUNCH, _ext("03", "3027" + "3025" + "1601" + "61" + "0420" + "33" * 32)], "expected UTF8String"),
    ],
)
def test_claims_are_read_strictly(extensions: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(StewardProtocolError, match=message):
        KeepClaims.from_extensions(extensions)


def test_claims_that_would_encode_badly_are_refused_before_encoding() -> None:
    with pytest.raises(StewardProtocolError, match="workloadDigest must be 32 bytes"):
        KeepClaims(b"hex?", b"\x22" * 32).extensions()
    with pytest.raises(StewardProtocolError, match="sorted by use"):
        KeepClaims(b"\x11" * 32, b"\x22" * 32, (("steward", b"\x33" * 32), ("connect 3 x", b"\x33" * 32))).extensions()


STEWARD_PEM = "-----BEGIN CERTIFICATE-----\nsteward\n-----END CERTIFICATE-----\n"
UPSTREAM_PEM = "-----BEGIN CERTIFICATE-----\nupstream\n-----END CERTIFICATE-----\n"


def terms(*args: str, ca_bundles: dict[int, str] | None = None, steward_ca: str | None = STEWARD_PEM) -> LaunchTerms:
    stdio = (FileSpec("stdin", "stdin"), FileSpec("stdout", "stdout"), FileSpec("stderr", "stderr"))
    files = (*stdio, FileSpec("connect", "upstream", "tls", host="up.example", port=443, ca="up.pem"),
             FileSpec("connect", "api", "tls", host="api.example", port=443))
    config = WorkloadConfig("https://steward.example/", args, {"A": "1"}, files, "steward.pem")
    return LaunchTerms(8, "ab" * 32, config, ca_bundles={3: UPSTREAM_PEM} if ca_bundles is None else ca_bundles,
                       steward_ca=steward_ca)


def test_claims_of_a_launch() -> None:
    launch = terms("x")
    claims = KeepClaims.of(b"\x11" * 32, launch)
    assert claims.workload_sha256 == b"\x11" * 32  # the keep's own digest, as given: not launch.wasm_sha256
    assert claims.launch_sha256 == hashlib.sha256(launch.canonical_bytes()).digest()
    assert claims.trust_anchors == (
        ("connect 3 upstream", hashlib.sha256(UPSTREAM_PEM.encode()).digest()),
        ("steward", hashlib.sha256(STEWARD_PEM.encode()).digest()),
    )  # sorted by use
    assert KeepClaims.from_extensions(claims.extensions()) == claims
    # the launch bytes are deterministic; every field of the launch moves its digest
    assert KeepClaims.of(b"\x11" * 32, terms("x")) == claims
    for changed in (terms("y"), terms("x", steward_ca=STEWARD_PEM + "\n"), terms("x", ca_bundles={4: UPSTREAM_PEM}),
                    launch._replace(memory_limit=1 << 20), launch._replace(timeout_ms=5)):
        assert KeepClaims.of(b"\x11" * 32, changed).launch_sha256 != claims.launch_sha256
    bare = KeepClaims.of(b"\x11" * 32, terms("x", ca_bundles={}, steward_ca=None))
    assert bare.trust_anchors == ()
    assert [oid for oid, _ in bare.extensions()] == [WORKLOAD_DIGEST_OID, LAUNCH_DIGEST_OID]
