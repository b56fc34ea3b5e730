"""End to end on the SNP path with test-only AMD keys: the keep's evidence source (a fake configfs-tsm
kernel signing with a test VCEK) -> CSR -> a real Steward trusting that test root -> [CA, issued]
-> a TLS server with that chain -> ``motte attest fetch-cert --ca``. And the same request to a
Steward with AMD's real roots is refused; and a Steward pinning a workload refuses another."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from motte.cli import main
from motte.keep.csr import CertificateRequest, StewardExchange, build_csr, certificate_request, generate_key
from motte.keep.evidence import Evidence, NoEvidence
from motte.keep.evidence.snp import SnpEvidenceSource
from motte.shared.binding import KeepClaims
from motte.shared.control import LaunchTerms
from motte.shared.enarx_config import WorkloadConfig
from motte.shared.errors import MotteError
from motte.shared.steward_certs import IssuedChain, read_attestation
from motte.steward.check import check_request
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.steward.log import read_events
from motte.steward.policy import load_steward_policy
from tests.steward.conftest import ALLOW_KVM, StewardHandle
from tests.steward.fakes import DEBUG_POLICY, MEASUREMENT, VCEK_GUID, FakeSnp, FakeTsmKernel, cert_table
from tests.steward.test_check import snp_csr
from tests.workloads import workload

PINNED = load_steward_policy(f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')


@contextmanager
def tls_server(tmp_path: Path, chain_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Iterator[int]:
    """A TLS server on 127.0.0.1 presenting ``chain_pem``: the keep's side of fetch-cert."""
    cert_file, key_file = tmp_path / "keep-chain.pem", tmp_path / "keep.key"
    cert_file.write_bytes(chain_pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)  # until the client closes
            except (OSError, ssl.SSLError):
                pass  # a client that refused our certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def fetch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["attest", "fetch-cert", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def platform() -> FakeSnp:
    return FakeSnp.make()


def exchange(request: CertificateRequest, handle: StewardHandle) -> IssuedChain:
    ex = StewardExchange(f"https://{handle.host}:{handle.port}/", request)
    with socket.create_connection((handle.host, handle.port), timeout=30) as sock:
        sock.sendall(ex.outgoing())
        while (chain := ex.receive(sock.recv(512))) is None:
            pass
    return chain


def snp_keep_request(platform: FakeSnp, tmp_path: Path, claims: KeepClaims | None = None) -> CertificateRequest:
    root = tmp_path / "tsm"
    root.mkdir(exist_ok=True)
    kernel = FakeTsmKernel("sev_guest", platform.report, auxblob=cert_table({VCEK_GUID: platform.vcek}))
    return certificate_request(SnpEvidenceSource(tsm_root=root, tsm_files=kernel), claims=claims)


def test_snp_keep_to_steward_to_tls_client(
    steward: Callable[..., StewardHandle],
    platform: FakeSnp,
    ca: CertificateAuthority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    request = snp_keep_request(platform, tmp_path)

    # AMD's real roots: the test VCEK does not chain to them
    production = steward(PINNED)
    status, headers, _ = production.post(request.csr)
    assert (status, headers["motte-reason"]) == (400, "certificate_signature")
    with pytest.raises(MotteError, match="HTTP 400: certificate_signature"):
        exchange(request, production)

    # the same request to a Steward configured, in code, to trust the test root, sent the way the
    # keep sends it: the sans-I/O exchange over a byte stream (TLS in the keep; plain TCP here)
    trusting = steward(PINNED, amd_trust=platform.trust())
    chain = exchange(request, trusting)
    (issued,) = list(read_events(trusting.log_path))
    assert issued["technology"] == "snp" and issued["serial"] == f"{chain.leaf.serial_number:x}"
    assert issued["claims"]["measurements"]["measurement"] == MEASUREMENT.hex()  # type: ignore[index]
    assert [e["reason"] for e in read_events(production.log_path)] == ["certificate_signature"] * 2

    ca_file = tmp_path / "steward-ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    with tls_server(tmp_path, chain.pem(), request.key) as port:
        code, out, err = fetch(capsys, f"127.0.0.1:{port}", "--ca", str(ca_file))
        assert code == 0, err
        assert "verified: the certificate chains to the Steward CA" in out
        assert "technology: snp" in out and f"measurement: {MEASUREMENT.hex()}" in out and not err

        code, out, _ = fetch(capsys, f"127.0.0.1:{port}", "--ca", str(ca_file), "--json")
        result = json.loads(out)
        assert code == 0 and result["technology"] == "snp" and result["claims"]["product"] == "Milan"
        assert result["warnings"] == []

        code, out, err = fetch(capsys, f"127.0.0.1:{port}")
        assert code == 0 and "UNVERIFIED" in err and "technology: snp" in out

        other_ca = tmp_path / "other-ca.pem"
        other_ca.write_bytes(new_ca("other", now=datetime.now(UTC))[1].public_bytes(serialization.Encoding.PEM))
        code, out, _ = fetch(capsys, f"127.0.0.1:{port}", "--ca", str(other_ca))
        assert code == 1 and "does not chain to the Steward CA" in out


def test_a_self_signed_keep_certificate_is_called_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, cert = new_ca("keep (self-signed)", now=datetime.now(UTC))
    with tls_server(tmp_path, cert.public_bytes(serialization.Encoding.PEM), key) as port:
        code, _, err = fetch(capsys, f"127.0.0.1:{port}")
    assert code == 0
    assert "self-signed keep certificate: it proves nothing" in err and "NOT ATTESTED" in err


def test_fetch_cert_input_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    for args, message in (
        (["nonsense"], "is not HOST:PORT"),
        ([f"127.0.0.1:{port}"], "cannot fetch a certificate"),
        (["127.0.0.1:1", "--ca", str(tmp_path / "absent.pem")], "cannot load the CA certificate"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["attest", "fetch-cert", *args])
        assert exc.value.code == 125
        assert message in capsys.readouterr().err


def test_bad_snp_evidence_over_http_is_refused_logged_and_the_service_keeps_serving(
    steward: Callable[..., StewardHandle], platform: FakeSnp, tmp_path: Path
) -> None:
    handle = steward(PINNED, amd_trust=platform.trust())
    good = snp_csr(platform)
    evidence = x509.load_der_x509_csr(good).extensions[0].value.value  # type: ignore[attr-defined]
    cases = [
        (snp_csr(platform, binding_key=generate_key("snp")), "policy_report_data"),  # evidence for another key
        (build_csr(generate_key("snp"), Evidence("snp", evidence)), "policy_report_data"),  # replayed, other key
        (snp_csr(platform, policy=DEBUG_POLICY), "policy_debug"),  # a debug-mode keep
    ]
    for csr, reason in cases:
        status, headers, body = handle.post(csr)
        assert (status, headers["motte-reason"]) == (400, reason), body
    assert handle.post(good)[0] == 200
    logged = list(read_events(handle.log_path))
    assert [(e["reason"], e["technology"]) for e in logged] == [(r, "snp") for _, r in cases] + [(None, "snp")]
    assert logged[1]["evidence_sha256"] == logged[3]["evidence_sha256"]  # the replay is visible in the log


def keep_claims(name: str) -> tuple[bytes, KeepClaims]:
    """The claims a keep makes of the test workload ``name`` launched with the default config."""
    wasm = workload(name).read_bytes()
    digest = hashlib.sha256(wasm)
    terms = LaunchTerms(len(wasm), digest.hexdigest(), WorkloadConfig(args=("a",)))
    return digest.digest(), KeepClaims.of(digest.digest(), terms)


def test_a_steward_pinning_measurement_and_workload_certifies_that_workload_only(
    steward: Callable[..., StewardHandle],
    platform: FakeSnp,
    ca: CertificateAuthority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    hello_sha256, hello = keep_claims("hello")
    echo_sha256, echo = keep_claims("echo")
    assert hello_sha256 != echo_sha256 and hello.launch_sha256 != echo.launch_sha256
    policy = load_steward_policy(
        f'workloads = ["{hello_sha256.hex()}"]\n[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n'
    )
    handle = steward(policy, amd_trust=platform.trust())
    request = snp_keep_request(platform, tmp_path, hello)
    chain = exchange(request, handle)
    attestation = read_attestation(chain.leaf)
    assert (attestation.technology, attestation.measurement) == ("snp", MEASUREMENT)
    assert attestation.keep_claims == hello and attestation.keep_claims.workload_sha256 == hello_sha256

    with pytest.raises(MotteError, match="HTTP 400: workload_not_allowed: workload digest " + echo_sha256.hex()):
        exchange(snp_keep_request(platform, tmp_path, echo), handle)
    events = read_events(handle.log_path)
    logged = [(e["verdict"], e["reason"], e["workload_sha256"], e["launch_sha256"]) for e in events]
    assert logged == [
        ("issued", None, hello_sha256.hex(), hello.launch_sha256.hex()),
        ("refused", "workload_not_allowed", echo_sha256.hex(), echo.launch_sha256.hex()),
    ]

    ca_file = tmp_path / "steward-ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    with tls_server(tmp_path, chain.pem(), request.key) as port:
        code, out, err = fetch(capsys, f"127.0.0.1:{port}", "--ca", str(ca_file))
        assert code == 0 and not err, err
        assert f"workload sha256: {hello_sha256.hex()}" in out and f"launch sha256: {hello.launch_sha256.hex()}" in out
        code, out, _ = fetch(capsys, f"127.0.0.1:{port}", "--ca", str(ca_file), "--json")
    result = json.loads(out)
    assert (result["workload_sha256"], result["launch_sha256"]) == (hello_sha256.hex(), hello.launch_sha256.hex())
    assert result["trust_anchors"] == []


def test_fetch_cert_shows_trust_anchors_and_escapes_what_the_certificate_says(
    ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "connect 3 \x1b]0;owned\x07\x1b[2J\u202etxt.exe"  # terminal escapes, a bidi override
    claims = KeepClaims(b"\x11" * 32, b"\x22" * 32, ((hostile, b"\x33" * 32), ("steward", b"\x44" * 32)))
    request = certificate_request(NoEvidence(), claims=claims)
    attested = check_request(request.csr, policy=ALLOW_KVM, now=datetime.now(UTC))
    leaf = ca.issue(attested, now=datetime.now(UTC), lifetime=ALLOW_KVM.lifetime)
    chain_pem = leaf.public_bytes(serialization.Encoding.PEM) + ca.cert.public_bytes(serialization.Encoding.PEM)
    with tls_server(tmp_path, chain_pem, request.key) as port:
        code, out, err = fetch(capsys, f"127.0.0.1:{port}")
        assert code == 0
        assert "\x1b" not in out + err and "\x07" not in out and "\u202e" not in out
        assert "trust anchor: connect 3 \\x1b]0;owned\\x07\\x1b[2J\\u202etxt.exe: sha256 " + "33" * 32 in out
        assert "trust anchor: steward: sha256 " + "44" * 32 in out
        assert "workload and launch digests are the keep's word only" in err
        code, out, _ = fetch(capsys, f"127.0.0.1:{port}", "--json")
    assert "\x1b" not in out
    assert json.loads(out)["trust_anchors"] == [
        {"use": hostile, "sha256": "33" * 32},
        {"use": "steward", "sha256": "44" * 32},
    ]
