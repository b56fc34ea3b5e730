"""End to end on every backend: a keep whose Enarx.toml names a Steward gets its certificate from
it (through the host's TCP relay, TLS ending in the keep) before the workload starts, and serves
its TLS listeners with ``[issued leaf, Steward CA]``; a refusal stops the run before the workload.

The Steward runs in this process on 127.0.0.1 with TLS; its server certificate is signed by a test
CA that the keep trusts through ``steward_ca``.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from motte.shared.binding import KeepClaims
from motte.shared.steward_certs import read_attestation
from motte.shared.steward_protocol import UNATTESTED
from motte.steward.app import StewardConfig, StewardService
from motte.steward.issuer import CertificateAuthority
from motte.steward.log import AuditLog, read_events
from motte.steward.policy import load_steward_policy
from tests.net.conftest import STDIO, Served, free_port, listen_toml
from tests.steward.conftest import running, steward_tls_identity
from tests.workloads import workload

PEM = serialization.Encoding.PEM
StewardTls = tuple[Path, ssl.SSLContext]  # the PEM of the CA of the Steward's TLS certificate; its server context


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(PEM)


@pytest.fixture(scope="module")
def steward_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    return steward_tls_identity(tmp_path_factory.mktemp("steward-tls"))


@contextmanager
def tls_steward(ca: CertificateAuthority, context: ssl.SSLContext, policy_text: str,
                log_path: Path) -> Iterator[tuple[str, AuditLog]]:
    """A Steward serving TLS on 127.0.0.1; yields its https URL and its audit log."""
    log = AuditLog(log_path)
    service = StewardService(StewardConfig.build(ca, load_steward_policy(policy_text)), log)
    try:
        with running(service, ssl_context=context) as url:
            yield f"https://127.0.0.1:{urlsplit(url).port}/", log
    finally:
        log.close()


def steward_toml(url: str, ca_path: Path | None, rest: str) -> str:
    head = f'steward = "{url}"\n' + (f'steward_ca = "{ca_path}"\n' if ca_path is not None else "")
    return head + rest  # top-level keys before the [[files]] tables


def trusting(ca_cert: x509.Certificate) -> ssl.SSLContext:
    """A client that trusts the Steward's CA and nothing else."""
    return ssl.create_default_context(cadata=_pem(ca_cert).decode())


def get(port: int, context: ssl.SSLContext) -> tuple[bytes, x509.Certificate]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = bytearray()
        while chunk := tls.recv(65536):
            body += chunk
    return bytes(body), x509.load_der_x509_certificate(der)


def test_keep_serves_the_stewards_certificate(ca: CertificateAuthority, steward_tls: StewardTls,
                                              tmp_path: Path, backend: str) -> None:
    ca_path, context = steward_tls
    policy = 'allow_unattested = true\ndns_names = ["localhost"]\n'
    with tls_steward(ca, context, policy, tmp_path / "log.db") as (url, _log):
        port = free_port()
        served = Served(tmp_path, "http_hello", steward_toml(url, ca_path, listen_toml(port)), "1", backend=backend)
        try:
            served.expect("listening")
            body, leaf = get(port, trusting(ca.cert))  # verifies the chain and the name "localhost"
            served.expect("served 1")
            assert served.wait() == 0, served.stderr
        finally:
            served.stop()
    assert body.startswith(b"HTTP/1.0 200") and body.endswith(b"Hello from a motte keep!\n")
    assert leaf.issuer == ca.cert.subject
    attestation = read_attestation(leaf)
    assert attestation.technology == UNATTESTED  # a nil or kvm keep: KVM evidence, admitted by this policy
    assert not attestation.attested
    assert attestation.keep_claims is not None  # the keep's word only, here: nothing attests it
    assert attestation.keep_claims.workload_sha256 == hashlib.sha256(workload("http_hello").read_bytes()).digest()


def served_claims(tmp_path: Path, ca: CertificateAuthority, toml: str, port: int, arg: str) -> KeepClaims | None:
    """Run http_hello on nil with ``toml`` (listening on ``port``) and ``arg``; what the certificate
    it serves says it runs."""
    served = Served(tmp_path, "http_hello", toml, arg, backend="nil")
    try:
        served.expect("listening")
        _, leaf = get(port, trusting(ca.cert))
        served.expect("served 1")
        assert served.wait() == 0, served.stderr
    finally:
        served.stop()
    return read_attestation(leaf).keep_claims


def test_the_keep_s_certificate_names_the_workload_and_the_launch_it_runs(ca: CertificateAuthority,
                                                                          steward_tls: StewardTls,
                                                                          tmp_path: Path) -> None:
    from motte.outside.enarx_toml import parse_enarx_toml
    from motte.shared.control import LaunchTerms

    ca_path, context = steward_tls
    wasm = workload("http_hello").read_bytes()
    with tls_steward(ca, context, 'allow_unattested = true\ndns_names = ["localhost"]\n', tmp_path / "log.db") as (
            url, log):
        port = free_port()
        toml = steward_toml(url, ca_path, listen_toml(port))
        first, again, other = (served_claims(tmp_path, ca, toml, port, arg) for arg in ("1", "1", "01"))
    assert first is not None and again is not None and other is not None
    assert first.workload_sha256 == hashlib.sha256(wasm).digest()  # the bytes the keep ran
    # the launch the host sent, rebuilt here: the keep hashed exactly its canonical bytes
    terms = LaunchTerms(len(wasm), hashlib.sha256(wasm).hexdigest(), parse_enarx_toml(toml).with_extra(args=["1"]),
                        steward_ca=ca_path.read_text())
    assert first.launch_sha256 == hashlib.sha256(terms.canonical_bytes()).digest()
    assert first.trust_anchors == (("steward", hashlib.sha256(ca_path.read_bytes()).digest()),)
    assert again == first  # the same workload and config: the same digests
    assert other.workload_sha256 == first.workload_sha256 and other.launch_sha256 != first.launch_sha256
    logged = [(e["workload_sha256"], e["launch_sha256"]) for e in read_events(log.location)]
    assert logged == [(c.workload_sha256.hex(), c.launch_sha256.hex()) for c in (first, again, other)]


def test_a_keep_without_steward_is_not_trusted_by_the_stewards_clients(ca: CertificateAuthority,
                                                                       tmp_path: Path, backend: str) -> None:
    port = free_port()
    served = Served(tmp_path, "http_hello", listen_toml(port), "1", backend=backend)
    try:
        served.expect("listening")
        with pytest.raises(ssl.SSLCertVerificationError):
            get(port, trusting(ca.cert))  # the self-signed certificate proves nothing
    finally:
        served.stop()


def run(tmp_path: Path, toml: str, backend: str) -> subprocess.CompletedProcess[bytes]:
    config = tmp_path / "Enarx.toml"
    config.write_text(toml)
    return subprocess.run(
        [sys.executable, "-m", "motte", "run", "--backend", backend, "--wasmcfgfile", str(config),
         str(workload("http_hello"))],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 125, result.stderr
    assert result.stdout == b""  # http_hello prints "listening" first thing: it never ran
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_refusal_stops_the_run(ca: CertificateAuthority, steward_tls: StewardTls, tmp_path: Path,
                                 backend: str) -> None:
    ca_path, context = steward_tls
    with tls_steward(ca, context, "allow_unattested = false\n", tmp_path / "log.db") as (url, _log):
        line = one_error_line(run(tmp_path, steward_toml(url, ca_path, listen_toml(free_port())), backend))
    assert "the Steward refused the keep's certificate request: HTTP 401: unattested_refused" in line, line


def test_an_unreachable_or_untrusted_steward_stops_the_run(ca: CertificateAuthority,
                                                           steward_tls: StewardTls,
                                                           tmp_path: Path, backend: str) -> None:
    ca_path, context = steward_tls
    nowhere = f"https://127.0.0.1:{free_port()}/"
    line = one_error_line(run(tmp_path, steward_toml(nowhere, ca_path, STDIO), backend))
    assert "cannot get the keep's certificate from the Steward at 127.0.0.1:" in line, line
    assert "ECONNREFUSED" in line, line
    with tls_steward(ca, context, "allow_unattested = true\n", tmp_path / "log.db") as (url, _log):
        line = one_error_line(run(tmp_path, steward_toml(url, None, STDIO), backend))  # no steward_ca: not trusted
    assert "certificate verification failed" in line, line


def test_the_host_connects_the_keep_to_the_configs_steward_only(tmp_path: Path) -> None:
    from motte.host.net import HostNetwork
    from motte.outside.enarx_toml import parse_enarx_toml
    from motte.shared import netstreams

    network = HostNetwork(parse_enarx_toml('steward = "https://steward.example:8443/x"\n'))
    network.prepare()
    try:
        for host, port in (("elsewhere.example", 8443), ("steward.example", 443)):
            reason = network._on_connect_request(7, {netstreams.STEWARD: True, "host": host, "port": port})
            assert reason is not None and reason.startswith("EACCES: ")
    finally:
        network.close()
    plain = HostNetwork(parse_enarx_toml(STDIO))
    plain.prepare()
    try:
        reason = plain._on_connect_request(7, {netstreams.STEWARD: True, "host": "steward.example", "port": 8443})
        assert reason is not None and reason.startswith("EACCES: ")  # no steward in the config: nowhere
    finally:
        plain.close()


def test_the_keep_takes_a_steward_ca_only_with_a_steward() -> None:
    from motte.outside.enarx_toml import parse_enarx_toml
    from motte.shared.control import STDIO_KINDS, ControlError, Conversation, LaunchTerms

    def launch(toml: str, steward_ca: str) -> LaunchTerms:
        config = parse_enarx_toml(toml)
        terms = {"config": config.to_json(), "wasm": {"size": 8, "sha256": "0" * 64}, "dirs": [],
                 "limits": {"memory": 1 << 20, "timeout_ms": None}, "ca": [], "steward_ca": steward_ca,
                 "delivery": "run", "secrets": [], "package": None}
        stdio = [{"fd": fd, "stream": 2 * fd + 3} for fd, f in enumerate(config.files) if f.kind in STDIO_KINDS]
        streams = {"wasm": 1, "stdio": stdio, "dirs": [], "cache_dir": None, "terminals": []}
        launched = Conversation("keep").received({"op": "launch", "terms": terms, "streams": streams})
        return launched.terms  # type: ignore[union-attr]

    assert launch('steward = "https://s.example"\n', "PEM").steward_ca == "PEM"
    with pytest.raises(ControlError, match="names no steward"):
        launch(STDIO, "PEM")
    with pytest.raises(ControlError, match="steward_ca is longer than 131072 characters"):
        launch('steward = "https://s.example"\n', "x" * (200 << 10))
