"""The keep's certificate request, and the protocol helpers it shares with the Steward: the CSR's
exact shape, the key binding, the answer's checks, and the sans-I/O HTTP framing."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from motte.keep.csr import (
    CertificateRequest,
    StewardExchange,
    accept_response,
    build_csr,
    certificate_request,
    generate_key,
)
from motte.keep.evidence import Evidence, NoEvidence
from motte.shared.binding import KeepClaims, csr_report_data
from motte.shared.der import DerReader
from motte.shared.errors import MotteError
from motte.shared.steward_http import ResponseReader, build_request, parse_steward_url
from motte.shared.steward_protocol import (
    StewardProtocolError,
    decode_chain,
    encode_chain,
    key_binding,
    read_csr_info,
    read_extensions,
)

# The one attribute, byte for byte: extensionRequest { SEQUENCE { Extension { KVM OID, OCTET STRING "" } } }
KVM_ATTRIBUTE = bytes.fromhex("301f06092a864886f70d01090e3112301030 0e060a2b0601040183c71e01010400".replace(" ", ""))


class Recording:
    """An evidence source that records the report data it was asked to bind."""

    def __init__(self, technology: str, value: bytes) -> None:
        self.technology = technology
        self.value = value
        self.asked: list[bytes] = []

    def collect(self, report_data: bytes) -> Evidence:
        self.asked.append(report_data)
        return Evidence(self.technology, self.value)


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def test_kvm_csr_has_an_empty_subject_and_exactly_one_empty_kvm_extension() -> None:
    request = certificate_request(NoEvidence())
    csr = x509.load_der_x509_csr(request.csr)
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([])
    assert isinstance(request.key.curve, ec.SECP256R1)
    assert csr.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    assert [a.oid.dotted_string for a in csr.attributes] == ["1.2.840.113549.1.9.14"]
    (ext,) = list(csr.extensions)
    assert (ext.oid.dotted_string, ext.critical, ext.value.value) == ("1.3.6.1.4.1.58270.1.1", False, b"")  # type: ignore[attr-defined]
    # and the DER of the attributes field is exactly one attribute, as written above
    reader = DerReader(csr.tbs_certrequest_bytes, "csr")
    info = DerReader(reader.read(0x30).content, "info")
    for _ in range(3):
        info.read()
    assert info.read(0xA0).content == KVM_ATTRIBUTE
    info.done()


def test_snp_csr_uses_p384_sha384_and_binds_sha384_of_the_spki() -> None:
    source = Recording("snp", b"\x30\x00")
    request = certificate_request(source)
    assert isinstance(request.key.curve, ec.SECP384R1)
    assert source.asked == [hashlib.sha384(spki(request.key)).digest() + bytes(16)]
    assert request.report_data == source.asked[0]
    csr = x509.load_der_x509_csr(request.csr)
    assert csr.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384
    (ext,) = list(csr.extensions)
    assert ext.oid.dotted_string == "1.3.6.1.4.1.58270.1.3" and ext.value.value == b"\x30\x00"  # type: ignore[attr-defined]


@pytest.mark.parametrize("technology", ["kvm", "tdx", "sgx"])
def test_other_keeps_bind_sha256_of_the_spki_with_32_zero_bytes(technology: str) -> None:
    source = Recording(technology, b"" if technology == "kvm" else b"\x30\x00")
    request = certificate_request(source)
    assert source.asked == [hashlib.sha256(spki(request.key)).digest() + bytes(32)]
    (ext,) = list(x509.load_der_x509_csr(request.csr).extensions)
    assert (
        ext.oid.dotted_string
        == {"kvm": "1.3.6.1.4.1.58270.1.1", "tdx": "1.3.6.1.4.1.58270.1.4", "sgx": "1.3.6.1.4.1.58270.1.2"}[technology]
    )


def test_a_fresh_key_every_time_and_the_curve_is_enforced() -> None:
    assert spki(certificate_request(NoEvidence()).key) != spki(certificate_request(NoEvidence()).key)
    with pytest.raises(MotteError, match="secp384r1"):
        build_csr(generate_key("kvm"), Evidence("snp", b"\x30\x00"))
    liar = Recording("snp", b"")
    liar.collect = lambda report_data: Evidence("kvm", b"")  # type: ignore[method-assign]
    with pytest.raises(MotteError, match="produced kvm"):
        certificate_request(liar)


def test_the_strict_csr_reader_sees_what_cryptography_sees() -> None:
    request = certificate_request(Recording("tdx", b"\x30\x03\x04\x01\x07"))
    csr = x509.load_der_x509_csr(request.csr)
    info = read_csr_info(csr.tbs_certrequest_bytes)
    assert info.subject == b"\x30\x00" and info.spki == spki(request.key)
    ((oid, values),) = info.attributes
    assert oid == "1.2.840.113549.1.9.14" and len(values) == 1
    assert read_extensions(values[0]) == [("1.3.6.1.4.1.58270.1.4", False, b"\x30\x03\x04\x01\x07")]


# --- the Steward's answer --------------------------------------------------------------------------
def ca_and_leaf(
    key: ec.EllipticCurvePrivateKey,
) -> tuple[x509.Certificate, x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ca")])

    def cert(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(ca_key, hashes.SHA256())
        )

    return cert(name, ca_key.public_key()), cert(x509.Name([]), key.public_key()), ca_key


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def test_accept_response_checks_the_chain_is_for_this_key() -> None:
    request = certificate_request(NoEvidence())
    ca, leaf, _ = ca_and_leaf(request.key)
    chain = accept_response(request, 200, encode_chain([der(ca), der(leaf)]))
    assert chain.leaf == leaf and chain.ca == ca
    assert x509.load_pem_x509_certificates(chain.pem()) == [leaf, ca]  # a TLS server's order
    other = CertificateRequest(generate_key("kvm"), request.evidence, request.csr)
    with pytest.raises(StewardProtocolError, match="not for this keep's key"):
        accept_response(other, 200, encode_chain([der(ca), der(leaf)]))
    with pytest.raises(StewardProtocolError, match="got 1 certificates"):
        accept_response(request, 200, encode_chain([der(leaf)]))
    stranger, _, _ = ca_and_leaf(request.key)
    with pytest.raises(StewardProtocolError, match="signature does not verify"):
        accept_response(request, 200, encode_chain([der(stranger), der(leaf)]))
    with pytest.raises(MotteError, match="HTTP 401: unattested_refused: no"):
        accept_response(request, 401, b"unattested_refused: no\nmore")


def test_chain_der_is_a_sequence_of_certificates() -> None:
    assert encode_chain([b"\x30\x00", b"\x30\x01\x05"]) == b"\x30\x05\x30\x00\x30\x01\x05"
    assert decode_chain(b"\x30\x05\x30\x00\x30\x01\x05") == [b"\x30\x00", b"\x30\x01\x05"]
    for bad in (b"\x30\x05\x30\x00\x30\x01\x05\x00", b"\x30\x02\x04\x00", b"\x30\x80\x00\x00", b"\x30\x81\x02\x30\x00"):
        with pytest.raises(StewardProtocolError):
            decode_chain(bad)


# --- HTTP framing ------------------------------------------------------------------------------------
def test_steward_url_must_be_https() -> None:
    url = parse_steward_url("https://steward.example.com/api")
    assert url == ("steward.example.com", 443, "/api") and url.host_header == "steward.example.com"
    assert parse_steward_url("https://[::1]:8443").host_header == "[::1]:8443"
    for bad in ("http://steward.example.com", "https://", "https://u:p@h/", "https://h/?q=1", "https://h:99999/"):
        with pytest.raises(StewardProtocolError):
            parse_steward_url(bad)


def test_request_bytes() -> None:
    wire = build_request(parse_steward_url("https://s.example:8443/"), b"\x30\x00")
    head, body = wire.split(b"\r\n\r\n")
    assert body == b"\x30\x00"
    assert head.split(b"\r\n")[:4] == [
        b"POST / HTTP/1.1",
        b"Host: s.example:8443",
        b"Content-Type: application/pkcs10",
        b"Content-Length: 2",
    ]


def feed_bytewise(data: bytes, *, eof: bool = False) -> ResponseReader:
    reader = ResponseReader()
    for i in range(len(data)):
        reader.feed(data[i : i + 1])
    if eof:
        reader.feed_eof()
    return reader


def test_response_reader_content_length_chunked_and_eof() -> None:
    r = feed_bytewise(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: x\r\n\r\nhello")
    assert (r.complete, r.status, r.reason, r.body, r.headers["content-type"]) == (True, 200, "OK", b"hello", "x")
    r = feed_bytewise(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n")
    assert r.complete and r.body == b"hello"
    r = feed_bytewise(b"HTTP/1.0 401 Unauthorized\r\n\r\nno evidence", eof=True)
    assert (r.status, r.body) == (401, b"no evidence")
    partial = feed_bytewise(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    assert not partial.complete
    with pytest.raises(StewardProtocolError, match="closed before"):
        partial.feed_eof()


def test_response_reader_bounds_and_garbage() -> None:
    with pytest.raises(StewardProtocolError, match="too large"):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")
    with pytest.raises(StewardProtocolError, match="header section"):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000)
    with pytest.raises(StewardProtocolError, match="malformed"):
        ResponseReader().feed(b"SMTP ready\r\n\r\n")
    with pytest.raises(StewardProtocolError, match="larger than"):
        ResponseReader(max_body=10).feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\n")


def test_steward_exchange_is_the_whole_client_side_without_io() -> None:
    request = certificate_request(NoEvidence())
    ca, leaf, _ = ca_and_leaf(request.key)
    exchange = StewardExchange("https://steward.example:8443/", request)
    assert exchange.outgoing() == build_request(parse_steward_url("https://steward.example:8443/"), request.csr)
    body = encode_chain([der(ca), der(leaf)])
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert exchange.receive(answer[:40]) is None
    chain = exchange.receive(answer[40:])
    assert chain is not None and chain.certificates == (leaf, ca)
    refused = StewardExchange("https://steward.example/", request)
    with pytest.raises(MotteError, match="HTTP 401: no_evidence: none"):
        refused.receive(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 17\r\n\r\nno_evidence: none")
    cut = StewardExchange("https://steward.example/", request)
    cut.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 900\r\n\r\n")
    with pytest.raises(StewardProtocolError, match="closed before"):
        cut.receive(b"")


# --- the binding extensions ------------------------------------------------------------------------
CLAIMS = KeepClaims(b"\x11" * 32, b"\x22" * 32, (("connect 3 upstream", b"\x33" * 32), ("steward", b"\x44" * 32)))


@pytest.mark.parametrize("technology", ["snp", "tdx", "kvm"])
def test_claims_ride_in_the_csr_after_the_evidence_and_in_its_report_data(technology: str) -> None:
    source = Recording(technology, b"" if technology == "kvm" else b"\x30\x00")
    request = certificate_request(source, claims=CLAIMS)
    assert source.asked == [csr_report_data(spki(request.key), technology, CLAIMS.extensions())]
    assert request.report_data == source.asked[0] != key_binding(spki(request.key), technology)
    csr = x509.load_der_x509_csr(request.csr)
    assert csr.is_signature_valid and csr.subject == x509.Name([])
    info = read_csr_info(csr.tbs_certrequest_bytes)
    ((oid, values),) = info.attributes  # still exactly one attribute: extensionRequest
    assert oid == "1.2.840.113549.1.9.14" and len(values) == 1
    evidence, *bound = read_extensions(values[0])
    assert (evidence.oid, evidence.critical, evidence.value) == (source.collect(bytes(64)).oid, False, source.value)
    assert [(e.oid, e.critical, e.value) for e in bound] == [(oid, False, value) for oid, value in CLAIMS.extensions()]
    assert [e.oid for e in bound] == ["1.3.6.1.4.1.58270.3.1", "1.3.6.1.4.1.58270.3.2", "1.3.6.1.4.1.58270.3.3"]


def test_without_claims_the_csr_is_enarx_s() -> None:
    key = generate_key("kvm")
    assert build_csr(key, Evidence("kvm", b""), None) != build_csr(key, Evidence("kvm", b""), CLAIMS)
    request = certificate_request(NoEvidence(), key)
    assert request.claims is None and request.report_data == key_binding(spki(key), "kvm")
    (ext,) = list(x509.load_der_x509_csr(request.csr).extensions)
    assert ext.oid.dotted_string == "1.3.6.1.4.1.58270.1.1"
