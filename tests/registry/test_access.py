"""Who may read what, and clients that stall: private repositories and Steward-issued client
certificates; a slow uploader and a connection that never finishes its request."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from motte.keep.csr import build_csr, certificate_request, generate_key
from motte.keep.evidence import Evidence, NoEvidence
from motte.keep.evidence.encoding import encode_snp_evidence
from motte.registry.formats import DIRECTORY_TYPE
from motte.registry.signing import generate_key as generate_signing_key
from motte.registry.signing import publisher_id
from motte.shared.steward_certs import spki_der
from motte.shared.steward_protocol import key_binding
from motte.steward.check import check_request
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.steward.policy import load_steward_policy
from motte.tenant.registry.client import RegistryError
from motte.tenant.registry.fetch import fetch_package
from motte.tenant.registry.policy import RegistryPolicy
from motte.tenant.registry.publish import publish
from motte.tenant.registry.tree import build_tree
from tests.registry.conftest import make_package, padded_wasm, write_pem_pair
from tests.steward.conftest import ALLOW_KVM
from tests.steward.fakes import MEASUREMENT, FakeSnp
from tests.tenant.attest_forge import NOW

PINNED = load_steward_policy(f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')


def keep_certificate(ca: CertificateAuthority, folder: Path, *, attested: bool) -> tuple[Path, Path]:
    """A keep's certificate from the Steward's CA: for an SNP keep whose evidence checked out, or
    for an unattested one (a policy that allows those)."""
    if attested:
        platform = FakeSnp.make()
        key = generate_key("snp")
        report = platform.report(key_binding(spki_der(key.public_key()), "snp"))
        csr = build_csr(key, Evidence("snp", encode_snp_evidence(platform.vcek, [], report)))
        checked = check_request(csr, policy=PINNED, now=NOW, amd_trust=platform.trust())
    else:
        request = certificate_request(NoEvidence())
        key, checked = request.key, check_request(request.csr, policy=ALLOW_KVM, now=datetime.now(UTC))
    cert = ca.issue(checked, now=datetime.now(UTC), lifetime=ALLOW_KVM.lifetime)
    return write_pem_pair(folder, "attested" if attested else "unattested",
                          cert.public_bytes(serialization.Encoding.PEM), key)


def test_a_private_repository_is_read_only_with_a_steward_issued_certificate(  # type: ignore[no-untyped-def]
        start_registry, keep_ca: CertificateAuthority, tmp_path: Path) -> None:
    ca_file = tmp_path / "steward-ca.pem"
    ca_file.write_bytes(keep_ca.cert.public_bytes(serialization.Encoding.PEM))
    reg = start_registry(steward_cas=(ca_file,))
    reg.register(public=False)
    key = generate_signing_key()
    slug = reg.slug("alice/app:0.1.0")
    publish(reg.client(), slug, make_package(tmp_path / "pkg"), key)
    policy = RegistryPolicy(frozenset({publisher_id(key)}))

    with pytest.raises(RegistryError, match="is private") as caught:
        fetch_package(slug, reg.trust(token=None), policy)
    assert caught.value.status == 401

    cert, cert_key = keep_certificate(keep_ca, tmp_path, attested=True)
    fetched = fetch_package(slug, reg.trust(token=None, client_cert=cert, client_key=cert_key), policy)
    assert fetched.package.config.args == ("hello",)
    assert fetch_package(slug, reg.trust(), policy).signer == publisher_id(key)  # the token's holder reads too

    cert, cert_key = keep_certificate(keep_ca, tmp_path, attested=False)
    with pytest.raises(RegistryError, match="not attested") as caught:
        fetch_package(slug, reg.trust(token=None, client_cert=cert, client_key=cert_key), policy)
    assert caught.value.status == 403

    other_key, other_cert = new_ca("another CA", now=datetime.now(UTC))
    foreign = write_pem_pair(tmp_path, "foreign", other_cert.public_bytes(serialization.Encoding.PEM), other_key)
    with pytest.raises(RegistryError):  # a certificate no trusted Steward issued fails the handshake
        fetch_package(slug, reg.trust(token=None, client_cert=foreign[0], client_key=foreign[1]), policy)


def test_unattested_readers_only_when_the_registry_allows_them(  # type: ignore[no-untyped-def]
        start_registry, keep_ca: CertificateAuthority, tmp_path: Path) -> None:
    ca_file = tmp_path / "steward-ca.pem"
    ca_file.write_bytes(keep_ca.cert.public_bytes(serialization.Encoding.PEM))
    reg = start_registry(steward_cas=(ca_file,), allow_unattested_readers=True)
    reg.register(public=False)
    slug = reg.slug("alice/app:0.1.0")
    publish(reg.client(), slug, make_package(tmp_path / "pkg"))
    cert, cert_key = keep_certificate(keep_ca, tmp_path, attested=False)
    trust = reg.trust(token=None, client_cert=cert, client_key=cert_key)
    assert fetch_package(slug, trust, RegistryPolicy(allow_unsigned=True)).signer is None


def _tls_socket(reg) -> socket.socket:  # type: ignore[no-untyped-def]
    host, port = reg.host.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=20)
    return reg.trust().ssl_context().wrap_socket(raw, server_hostname=host)


def test_a_stalled_upload_is_cut_off_and_does_not_hold_up_others(start_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry(idle_timeout=1.5)
    reg.register()
    published = reg.slug("alice/app:0.1.0")
    publish(reg.client(), published, make_package(tmp_path / "done"))
    # Begin publishing another tag, then stall half way through its main.wasm.
    slug = reg.slug("alice/app:0.2.0")
    folder = make_package(tmp_path / "slow", wasm=padded_wasm(1 << 20))
    nodes = build_tree(folder)
    client = reg.client()
    from motte.tenant.registry.publish import tag_body

    body, content_type = tag_body(nodes[0].meta, slug, None)
    from motte.registry.formats import Meta

    client.request("PUT", slug.route("tag"), body, {"Content-Type": content_type,
                                                    "Content-Digest": Meta.of(body, content_type).content_digest})
    client.request("PUT", slug.route("tree"), nodes[0].content,
                   {"Content-Type": DIRECTORY_TYPE, "Content-Digest": nodes[0].meta.content_digest})
    wasm = next(node for node in nodes if node.path == ("main.wasm",))
    data = wasm.file.read_bytes() if wasm.file else b""
    stalled = _tls_socket(reg)
    head = (f"PUT {slug.route('tree', ('main.wasm',)).url_path()} HTTP/1.1\r\nHost: {reg.host}\r\n"
            f"Authorization: Bearer {reg.token}\r\nContent-Type: {wasm.meta.type}\r\n"
            f"Content-Length: {wasm.meta.length}\r\nContent-Digest: {wasm.meta.content_digest}\r\n\r\n")
    stalled.sendall(head.encode() + data[: len(data) // 2])
    began = time.monotonic()
    fetched = fetch_package(published, reg.trust(), RegistryPolicy(allow_unsigned=True))  # meanwhile: served
    assert fetched.package.config.args == ("hello",) and time.monotonic() - began < 1.5
    answer = stalled.recv(4096)
    waited = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 408") and b"nothing arrived for 1.5 s" in answer
    assert 1.0 < waited < 6.0
    stalled.close()
    with pytest.raises(RegistryError, match="no tag"):  # the tag stays unpublished
        client.request("GET", slug.route("tag"))


def test_a_request_head_that_never_ends_is_dropped(start_registry) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry(idle_timeout=1.0)
    slow = _tls_socket(reg)
    slow.sendall(b"GET /api/v0.1.0/alice HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    began = time.monotonic()
    assert slow.recv(4096) == b""  # closed, with nothing answered
    assert time.monotonic() - began < 10
    slow.close()
