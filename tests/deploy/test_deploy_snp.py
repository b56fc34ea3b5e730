"""``motte deploy`` end to end on the SNP path, with test-only AMD keys that only this test trusts
(a fake SEV-SNP platform behind the keep's real configfs-tsm evidence source): the tenant's
policy pins the measurement, the workload runs, its Steward certificate carries its digest; a
Steward pinning another workload refuses it. And the host's attacks on the session: a splice to
another keep and a replayed answer are refused before anything is sent."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from motte.keep.evidence.snp import SnpEvidenceSource
from motte.shared.binding import provision_report_data
from motte.shared.control import Provision
from motte.shared.provision import Abort, EvidenceOffer, FrameReader, Hello, ProvisionError, encode
from motte.shared.steward_certs import read_attestation, spki_der
from motte.shared.tls_pipe import TlsPipe, server_context
from motte.steward.app import StewardConfig, StewardService
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.steward.log import AuditLog, read_events
from motte.steward.policy import load_steward_policy
from motte.tenant.deploy.package import load_package
from motte.tenant.deploy.policy import load_tenant_policy
from motte.tenant.deploy.session import Limits, deploy
from motte.tenant.deploy.verify import KeepRefused
from tests.deploy.harness import Host, InProcessKeep
from tests.steward.conftest import running, steward_tls_identity
from tests.steward.fakes import MEASUREMENT, VCEK_GUID, FakeSnp, FakeTsmKernel, cert_table
from tests.workloads import workload

MEMORY = 256 << 20
PINNED = load_tenant_policy(f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


@pytest.fixture(scope="module")
def platform() -> FakeSnp:
    return FakeSnp.make()


@pytest.fixture(scope="module")
def steward_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    return steward_tls_identity(tmp_path_factory.mktemp("steward-tls"))


def snp_source(platform: FakeSnp, tmp_path: Path, name: str = "tsm") -> SnpEvidenceSource:
    root = tmp_path / name
    root.mkdir()
    kernel = FakeTsmKernel("sev_guest", platform.report, auxblob=cert_table({VCEK_GUID: platform.vcek}))
    return SnpEvidenceSource(tsm_root=root, tsm_files=kernel)


@pytest.fixture
def snp_keep(platform: FakeSnp, tmp_path: Path) -> Iterator[InProcessKeep]:
    keep = InProcessKeep(snp_source(platform, tmp_path))
    try:
        yield keep
    finally:
        keep.close()


@contextmanager
def snp_steward(platform: FakeSnp, tls: ssl.SSLContext, workloads: list[str], log_path: Path) -> Iterator[str]:
    """A Steward over TLS that trusts the test AMD root, pins the measurement and ``workloads``."""
    key, cert = new_ca("test Steward", now=datetime.now(UTC))
    pins = ", ".join(f'"{digest}"' for digest in workloads)
    policy = load_steward_policy(f'workloads = [{pins}]\n[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
    log = AuditLog(log_path)
    config = StewardConfig.build(CertificateAuthority(key, cert), policy, amd_trust=platform.trust())
    service = StewardService(config, log)
    try:
        with running(service, ssl_context=tls) as url:
            yield f"https://127.0.0.1:{urlsplit(url).port}/"
    finally:
        log.close()


def package(tmp_path: Path, name: str, toml: str = STDIO, ca: Path | None = None) -> Path:
    folder = tmp_path / f"pkg-{name}"
    folder.mkdir()
    (folder / "main.wasm").write_bytes(workload(name).read_bytes())
    if ca is not None:
        (folder / "steward-ca.pem").write_bytes(ca.read_bytes())
    (folder / "Enarx.toml").write_text(toml)
    return folder


def test_snp_deploy_runs_the_pinned_workload_and_its_certificate_names_it(
        platform: FakeSnp, snp_keep: InProcessKeep, steward_tls: tuple[Path, ssl.SSLContext], tmp_path: Path) -> None:
    ca_path, tls = steward_tls
    hello = hashlib.sha256(workload("hello").read_bytes()).hexdigest()
    with snp_steward(platform, tls, [hello], tmp_path / "log.db") as url:
        toml = f'steward = "{url}"\nsteward_ca = "steward-ca.pem"\n' + STDIO
        pkg = load_package(package(tmp_path, "hello", toml, ca_path))
        host = Host(snp_keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
        out: list[bytes] = []
        outcome = deploy(host.session(), pkg, PINNED, Limits(MEMORY), output=lambda f, d: out.append(d),
                         amd_trust=platform.trust())
    assert outcome.accepted.technology == "snp" and outcome.accepted.claims is not None
    assert outcome.accepted.claims.measurements["measurement"] == MEASUREMENT
    assert b"".join(out) == b"Hello from a motte keep!\n" and outcome.exit is not None and outcome.exit.status == 0
    assert outcome.started.chain is not None
    leaf = x509.load_pem_x509_certificates(outcome.started.chain.encode())[0]
    attestation = read_attestation(leaf)
    assert attestation.technology == "snp" and attestation.keep_claims is not None
    assert attestation.keep_claims.workload_sha256.hex() == hello == outcome.started.workload_sha256
    assert attestation.keep_claims.launch_sha256.hex() == outcome.started.launch_sha256
    assert [anchor for anchor, _ in attestation.keep_claims.trust_anchors] == ["steward"]
    assert host.join().exit is not None


def test_a_steward_pinning_another_workload_refuses_this_one(
        platform: FakeSnp, snp_keep: InProcessKeep, steward_tls: tuple[Path, ssl.SSLContext], tmp_path: Path) -> None:
    ca_path, tls = steward_tls
    hello = hashlib.sha256(workload("hello").read_bytes()).hexdigest()
    with snp_steward(platform, tls, [hello], tmp_path / "log.db") as url:
        toml = f'steward = "{url}"\nsteward_ca = "steward-ca.pem"\n' + STDIO
        pkg = load_package(package(tmp_path, "args_env", toml, ca_path))  # another wasm: another digest
        host = Host(snp_keep, Provision(wait_ms=30_000, memory_limit=MEMORY))
        # The keep tells its tenant why it did not start the workload; the host learns only that it failed.
        with pytest.raises(ProvisionError, match=f"workload_not_allowed: workload digest {pkg.wasm_sha256}"):
            deploy(host.session(), pkg, PINNED, Limits(MEMORY), output=lambda f, d: None, amd_trust=platform.trust())
    assert pkg.wasm_sha256 != hello
    end = host.join()
    assert end.exit is not None and (end.exit.reason, end.exit.message) == ("error", "")
    (event,) = read_events(tmp_path / "log.db")
    assert event["reason"] == "workload_not_allowed" and event["workload_sha256"] == pkg.wasm_sha256


def test_the_tenant_refuses_a_keep_whose_measurement_it_does_not_pin(
        platform: FakeSnp, snp_keep: InProcessKeep, tmp_path: Path) -> None:
    other = load_tenant_policy(f'[attestation.snp]\nmeasurements = ["{"cd" * 48}"]\n')
    host = Host(snp_keep, Provision(wait_ms=2_000, memory_limit=MEMORY))
    tap: list[bytes] = []
    pkg = load_package(package(tmp_path, "hello"))
    with pytest.raises(KeepRefused, match="measurement"):
        deploy(host.session(tap), pkg, other, Limits(MEMORY), output=lambda f, d: None, amd_trust=platform.trust())
    assert sum(map(len, tap)) < 16384  # handshake, challenge and evidence: never the workload


def test_amds_real_roots_refuse_the_test_platform(snp_keep: InProcessKeep, tmp_path: Path) -> None:
    host = Host(snp_keep, Provision(wait_ms=2_000, memory_limit=MEMORY))
    with pytest.raises(KeepRefused, match="certificate"):
        deploy(host.session(), load_package(package(tmp_path, "hello")), PINNED, Limits(MEMORY),
               output=lambda f, d: None)


class SplicingHost:
    """A malicious host: it ends the tenant's TLS itself (its own key, as if it were a keep), and
    answers the tenant's challenge with evidence it obtains from a genuine keep on a session of
    its own, for the tenant's nonce; or replays an answer it kept from an earlier session."""

    def __init__(self, genuine: Host, platform_key: ec.EllipticCurvePrivateKey | None = None):
        self.genuine = genuine
        self.pipe = TlsPipe(server_context(platform_key or ec.generate_private_key(ec.SECP384R1())), server=True)
        self.to_tenant: list[bytes] = []
        self._from_tenant = FrameReader("tenant")
        self.replay: EvidenceOffer | None = None
        self.answered: EvidenceOffer | None = None

    # the tenant's byte channel, as the host would relay it
    def send(self, data: bytes) -> None:
        if not self.pipe.handshake_done:
            self.pipe.feed(data)
            self.to_tenant.append(self.pipe.handshake())
            if self.pipe.handshake_done:
                self._messages(self.pipe.feed(b""))
            return
        self._messages(self.pipe.feed(data))

    def receive(self) -> bytes:
        return self.to_tenant.pop(0) if self.to_tenant else b""

    def _messages(self, plain: bytes) -> None:
        for message in self._from_tenant.feed(plain):
            if isinstance(message, Hello):
                offer = self.replay or self._genuine_answer(message.nonce)
                self.answered = offer
                self.to_tenant.append(self.pipe.encrypt(encode(offer)))
            elif isinstance(message, Abort):
                self.to_tenant.append(self.pipe.close())

    def _genuine_answer(self, nonce: bytes) -> EvidenceOffer:
        """The host's own TLS session to the genuine keep, asking it for the tenant's nonce."""
        from motte.shared.tls_pipe import client_context

        channel = self.genuine.session()
        pipe = TlsPipe(client_context(), server=False)
        flight = pipe.handshake()
        while not pipe.handshake_done:
            channel.send(flight)
            pipe.feed(channel.receive())
            flight = pipe.handshake()
        channel.send(flight + pipe.encrypt(encode(Hello(nonce))))
        reader = FrameReader("keep")
        while True:
            for message in reader.feed(pipe.feed(channel.receive())):
                assert isinstance(message, EvidenceOffer)
                return message


def test_a_host_that_splices_the_session_to_another_keep_is_caught(
        platform: FakeSnp, snp_keep: InProcessKeep, tmp_path: Path) -> None:
    genuine = Host(snp_keep, Provision(wait_ms=5_000, memory_limit=MEMORY))
    splice = SplicingHost(genuine)
    with pytest.raises(KeepRefused, match="report_data"):
        deploy(splice, load_package(package(tmp_path, "hello")), PINNED, Limits(MEMORY),
               output=lambda f, d: None, amd_trust=platform.trust())
    # the answer was genuine (the right platform, measurement and nonce) but made for another session
    assert splice.answered is not None and splice.answered.technology == "snp"


def test_a_replayed_answer_is_refused(platform: FakeSnp, tmp_path: Path) -> None:
    # An answer the genuine keep gave earlier, on a session of the host's own, for another nonce;
    # replayed on a session whose TLS ends at the host. Both the nonce and the session differ.
    old_nonce = bytes(32)
    key = ec.generate_private_key(ec.SECP384R1())
    source = snp_source(platform, tmp_path)
    report_data = provision_report_data("snp", old_nonce, spki_der(key.public_key()), bytes(32))
    old = EvidenceOffer("snp", "snp", source.collect(report_data).value)
    splice = SplicingHost(Host(InProcessKeep(snp_source(platform, tmp_path, "tsm2")), Provision(wait_ms=2_000)), key)
    splice.replay = old
    with pytest.raises(KeepRefused, match="report_data"):
        deploy(splice, load_package(package(tmp_path, "hello")), PINNED, Limits(MEMORY),
               output=lambda f, d: None, amd_trust=platform.trust())
