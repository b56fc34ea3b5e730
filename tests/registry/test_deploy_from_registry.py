"""``motte deploy HOST/USER/REPO:TAG``: the package comes from a registry, its digests and the tag's
signature checked against the tenant policy's publishers before any byte reaches a keep, and the
keep's Steward certificate names the package and tag."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from motte.host.agent.app import HostAgent
from motte.host.agent.keeps import AgentLimits
from motte.host.backends.nil import NilBackend
from motte.registry.signing import generate_key, publisher_id
from motte.shared.steward_certs import read_attestation
from motte.steward.app import StewardConfig, StewardService
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.steward.log import AuditLog
from motte.steward.policy import load_steward_policy
from motte.tenant.registry.publish import publish
from tests.agent.conftest import running
from tests.conftest import motte
from tests.registry.conftest import make_package
from tests.steward.conftest import running as running_steward
from tests.steward.conftest import steward_tls_identity
from tests.workloads import workload

STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


def test_deploy_a_signed_registry_package_and_the_certificate_names_it(  # type: ignore[no-untyped-def]
        start_registry, tmp_path: Path) -> None:
    (tmp_path / "steward-tls").mkdir()
    steward_ca_path, steward_tls = steward_tls_identity(tmp_path / "steward-tls")
    ca_key, ca_cert = new_ca("test Steward", now=datetime.now(UTC))
    policy = load_steward_policy('allow_unattested = true\n')
    log = AuditLog(tmp_path / "steward.db")
    service = StewardService(StewardConfig.build(CertificateAuthority(ca_key, ca_cert), policy), log)
    reg = start_registry()
    reg.register()
    key = generate_key()
    with running_steward(service, ssl_context=steward_tls) as steward_url:
        steward = f"https://127.0.0.1:{urlsplit(steward_url).port}/"
        folder = make_package(tmp_path / "pkg", wasm=workload("hello").read_bytes(),
                              config=f'steward = "{steward}"\nsteward_ca = "steward-ca.pem"\n' + STDIO,
                              extra={"steward-ca.pem": steward_ca_path.read_bytes()})
        slug = reg.slug("alice/app:1.0.0")
        publish(reg.client(), slug, folder, key)
        tenant = tmp_path / "tenant.toml"
        tenant.write_text(f'allow_unattested = true\npublishers = ["{publisher_id(key)}"]\n')
        stranger = tmp_path / "stranger.toml"
        stranger.write_text(f'allow_unattested = true\npublishers = ["{publisher_id(generate_key())}"]\n')
        agent_service = HostAgent({"nil": NilBackend()}, limits=AgentLimits(), log=lambda _: None)
        with running(agent_service, unix=tmp_path / "agent.sock") as agent:
            common = ["deploy", "--agent", agent, "--registry-ca", str(reg.ca_file)]
            refused = motte(*common, "--policy", str(stranger), str(slug))
            deployed = motte(*common, "--policy", str(tenant), "--detach", "--json", str(slug))
    log.close()
    # A tag its publisher did not sign for this tenant: refused before any keep saw a byte.
    assert refused.returncode == 1 and b"\n" not in refused.stderr.strip()
    assert b"signed" in refused.stderr or b"publisher" in refused.stderr
    assert deployed.returncode == 0, deployed.stderr
    facts = json.loads(deployed.stdout)
    leaf = x509.load_pem_x509_certificates(facts["chain"].encode())[0]
    claims = read_attestation(leaf).keep_claims
    assert claims is not None and claims.package == str(slug)
    assert claims.workload_sha256.hex() == facts["workload_sha256"]
