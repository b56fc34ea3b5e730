"""Two registry replicas (two processes) share one store folder and one PostgreSQL database: a
tag published twice with different content is taken once and refused the other time, whichever
replica each publish goes to, and neither ever serves half a package."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from motte.registry.formats import parse_tag_slug
from motte.registry.signing import generate_key, publisher_id
from motte.tenant.registry.client import RegistryClient, RegistryError, RegistryTrust
from motte.tenant.registry.fetch import fetch_package
from motte.tenant.registry.policy import RegistryPolicy
from motte.tenant.registry.publish import publish
from tests.registry.conftest import TOKEN, make_package, padded_wasm, register
from tests.registry.test_crash import registry_process


def replica(store: Path, dsn: str, tls_dir: Path) -> AbstractContextManager[tuple[subprocess.Popen[bytes], str]]:
    return registry_process(store, tls_dir, dsn)


def test_one_tag_two_contents_two_replicas_one_wins(tls_dir: Path, tmp_path: Path,
                                                     postgres_dsn: Callable[[], str]) -> None:
    dsn, store = postgres_dsn(), tmp_path / "store"
    key = generate_key()
    policy = RegistryPolicy(frozenset({publisher_id(key)}))
    folders = [make_package(tmp_path / f"pkg{n}", wasm=padded_wasm(4 << 20)) for n in (0, 1)]
    trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
    with replica(store, dsn, tls_dir) as (_, first), replica(store, dsn, tls_dir) as (_, second):
        with RegistryClient(first, trust) as client:
            register(client)
        outcomes: list[object] = [None, None]

        def publish_to(n: int, host: str) -> None:
            with RegistryClient(host, trust) as client:
                try:
                    publish(client, parse_tag_slug(f"{host}/alice/app:1.0.0"), folders[n], key)
                    outcomes[n] = "published"
                except RegistryError as exc:
                    outcomes[n] = exc

        threads = [threading.Thread(target=publish_to, args=(n, host)) for n, host in enumerate((first, second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert outcomes.count("published") == 1, outcomes
        winner = outcomes.index("published")
        refusal = str(outcomes[1 - winner])
        assert "tag_exists" in refusal or "tag_pending" in refusal or "other content" in refusal, refusal
        # Both replicas serve the winner's package, whole; once it is published, the loser's
        # content is refused as the immutable tag it is, on either replica.
        for host in (first, second):
            fetched = fetch_package(parse_tag_slug(f"{host}/alice/app:1.0.0"), trust, policy)
            assert fetched.package.wasm == (folders[winner] / "main.wasm").read_bytes()
            with RegistryClient(host, trust) as client, pytest.raises(RegistryError, match="a tag never changes"):
                publish(client, parse_tag_slug(f"{host}/alice/app:1.0.0"), folders[1 - winner], key)


def test_a_replica_killed_mid_publish_leaves_nothing_half_served(tls_dir: Path, tmp_path: Path,
                                                                 postgres_dsn: Callable[[], str]) -> None:
    dsn, store = postgres_dsn(), tmp_path / "store"
    key = generate_key()
    policy = RegistryPolicy(frozenset({publisher_id(key)}))
    folder = make_package(tmp_path / "pkg", wasm=padded_wasm(16 << 20), extra={"data/a.bin": os.urandom(1 << 20)})
    trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
    with replica(store, dsn, tls_dir) as (doomed, first), replica(store, dsn, tls_dir) as (_, second):
        seen_by_survivor: list[str] = []

        def kill_halfway(done: int, total: int) -> None:
            if done >= total // 2 and doomed.poll() is None:
                try:  # the other replica, mid-publish: no tag yet
                    fetch_package(parse_tag_slug(f"{second}/alice/app:0.1.0"), trust, policy)
                    seen_by_survivor.append("a half-published tag was served")
                except RegistryError as exc:
                    seen_by_survivor.append(str(exc))
                os.kill(doomed.pid, signal.SIGKILL)
                doomed.wait(10)

        with RegistryClient(first, trust) as client:
            register(client)
            with pytest.raises(RegistryError):
                publish(client, parse_tag_slug(f"{first}/alice/app:0.1.0"), folder, key, kill_halfway)
        assert len(seen_by_survivor) == 1 and "no tag" in seen_by_survivor[0], seen_by_survivor
        with pytest.raises(RegistryError, match="no tag"):
            fetch_package(parse_tag_slug(f"{second}/alice/app:0.1.0"), trust, policy)
        with RegistryClient(second, trust) as client:  # the publisher resumes on the survivor
            assert not publish(client, parse_tag_slug(f"{second}/alice/app:0.1.0"), folder, key).created
        fetched = fetch_package(parse_tag_slug(f"{second}/alice/app:0.1.0"), trust, policy)
        assert fetched.package.wasm == (folder / "main.wasm").read_bytes()
