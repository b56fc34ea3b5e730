"""Registry test fixtures: a TLS identity from a test CA, a real registry serving HTTPS on
127.0.0.1 in a thread (always stopped at the end of the test), Steward-issued client
certificates, and packages to publish."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from motte.registry.app import Access, Registry
from motte.registry.formats import JSON_TYPE, Meta, Slug, canonical_json, parse_tag_slug
from motte.registry.server import registry_tls, serve
from motte.registry.store import Store, StoreLimits
from motte.steward.issuer import CertificateAuthority, new_ca
from motte.tenant.registry.client import RegistryClient, RegistryTrust
from tests.serving import serving
from tests.steward.conftest import steward_tls_identity

DEMO_WASM = Path(__file__).resolve().parents[2] / "src" / "motte" / "demo" / "hello.wasm"
TOKEN = "registry-test-token-0123456789"


def padded_wasm(size: int) -> bytes:
    """The demo module grown to ``size`` bytes by a custom section (still a valid module)."""
    wasm = DEMO_WASM.read_bytes()
    pad = size - len(wasm) - 1 - 5 - 4  # section id, a 5-byte LEB128 size, the name "pad" with its length
    assert pad >= 0
    length = 4 + pad
    leb = bytes([(length >> (7 * i) & 0x7F) | (0x80 if i < 4 else 0) for i in range(5)])
    return wasm + b"\x00" + leb + b"\x03pad" + os.urandom(pad)


def make_package(folder: Path, *, wasm: bytes | None = None, config: str | None = 'args = ["hello"]\n',
                 extra: dict[str, bytes] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.wasm").write_bytes(wasm if wasm is not None else DEMO_WASM.read_bytes())
    if config is not None:
        (folder / "Enarx.toml").write_text(config)
    for name, data in (extra or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


@dataclass
class RunningRegistry:
    url: str
    registry: Registry
    ca_file: Path
    store_dir: Path
    token: str | None
    clients: list[RegistryClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def trust(self, **changes: Any) -> RegistryTrust:
        return RegistryTrust(**{"ca_file": self.ca_file, "token": self.token, **changes})

    def client(self, **changes: Any) -> RegistryClient:
        client = RegistryClient(self.host, self.trust(**changes))
        self.clients.append(client)
        return client

    def slug(self, text: str) -> Slug:
        return parse_tag_slug(f"{self.host}/{text}")

    def register(self, user: str = "alice", repo: str = "app", *, public: bool = True) -> None:
        register(self.client(), user, repo, public=public)


def register(client: RegistryClient, user: str = "alice", repo: str = "app", *, public: bool = True) -> None:
    """Register ``user`` and ``user/repo`` (as motte user register and motte repo register do)."""
    slug = Slug(client.host, user, repo)
    for route, value in ((slug.route("user"), {"subject": user}), (slug.route("repo"), {"public": public})):
        body = canonical_json(value)
        client.request("PUT", route, body, {"Content-Type": JSON_TYPE,
                                            "Content-Digest": Meta.of(body, JSON_TYPE).content_digest})


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("registry-tls")
    steward_tls_identity(folder)
    return folder


@pytest.fixture(scope="session")
def keep_ca() -> CertificateAuthority:
    key, cert = new_ca("test Steward CA (registry)", now=datetime.now(UTC))
    return CertificateAuthority(key, cert)


@pytest.fixture
def start_registry(tls_dir: Path, tmp_path: Path) -> Iterator[Callable[..., RunningRegistry]]:
    """``start_registry(token=..., limits=..., steward_cas=[...], ...)`` serves a registry for this test."""
    stack: list[tuple[Any, RunningRegistry]] = []

    def start(*, token: str | None = TOKEN, limits: StoreLimits | None = None, steward_cas: tuple[Path, ...] = (),
              allow_unattested_readers: bool = False, idle_timeout: float = 30.0,
              registry_type: type[Registry] = Registry, log: Callable[[str], None] = lambda _: None) -> RunningRegistry:
        store_dir = tmp_path / f"store-{len(stack)}"
        access = Access(token, bool(steward_cas), allow_unattested_readers)
        registry = registry_type(Store(store_dir, limits), access, idle_timeout=idle_timeout, log=log)
        context = registry_tls(tls_dir / "server.pem", tls_dir / "server.key", steward_cas)
        running = serving(lambda stop, ready: serve(registry, ssl_context=context, on_ready=ready, stop=stop),
                          "registry")
        url = running.__enter__()
        handle = RunningRegistry(url, registry, tls_dir / "steward-tls-ca.pem", store_dir, token)
        stack.append((running, handle))
        return handle

    try:
        yield start
    finally:
        for running, handle in reversed(stack):
            for client in handle.clients:
                client.close()
            running.__exit__(None, None, None)


def write_pem_pair(folder: Path, name: str, cert_pem: bytes, key: Any) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def raw_request(handle: RunningRegistry, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, *, token: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as given (the path is sent unnormalized), on a connection of its own."""
    import http.client

    host, port = handle.host.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=handle.trust().ssl_context())
    all_headers = dict(headers or {})
    if token and handle.token:
        all_headers["Authorization"] = f"Bearer {handle.token}"
    try:
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
