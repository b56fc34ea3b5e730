"""kill -9 of the registry in the middle of a publish: the store stays consistent, the tag is whole
or absent, and the publish can be done again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from motte.registry.formats import parse_tag_slug
from motte.registry.signing import generate_key, publisher_id
from motte.tenant.registry.client import RegistryClient, RegistryError, RegistryTrust
from motte.tenant.registry.fetch import fetch_package
from motte.tenant.registry.policy import RegistryPolicy
from motte.tenant.registry.publish import publish
from tests.registry.conftest import TOKEN, make_package, padded_wasm, register


@contextmanager
def registry_process(store: Path, tls_dir: Path, database: str | None = None, *options: str
                     ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    token_file = store.parent / "token"
    if not token_file.exists():
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "motte", "registry", "serve", "--store", str(store), "--port", "0", "--json",
         "--tls-cert", str(tls_dir / "server.pem"), "--tls-key", str(tls_dir / "server.key"),
         "--token-file", str(token_file), *options],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, **({"MOTTE_REGISTRY_DATABASE": database} if database else {})})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "the registry did not start"
        yield proc, json.loads(line)["url"].split("://", 1)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()


def check_store(store: Path) -> list[tuple[str, int]]:
    """The store is consistent: SQLite says so, every node's blob is there with the bytes its name
    says, a published tag has its whole tree. Returns the tags as (name, published)."""
    with sqlite3.connect(store / "registry.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for (blob,) in db.execute("SELECT DISTINCT blob FROM nodes"):
            path = store / "blobs" / "sha256" / blob[:2] / blob
            assert hashlib.sha256(path.read_bytes()).hexdigest() == blob
        for tag, published, missing in db.execute("SELECT tag, published, missing FROM tags"):
            expected = db.execute("SELECT count(*) FROM expected WHERE tag = ?", (tag,)).fetchone()[0]
            stored = db.execute("SELECT count(*) FROM nodes WHERE tag = ?", (tag,)).fetchone()[0]
            assert missing == expected - stored and published == (missing == 0)
        return list(db.execute("SELECT tag, published FROM tags"))


@pytest.mark.parametrize("kill_at", [0.0, 0.5, 0.97, None])
def test_kill_9_during_publish_leaves_the_tag_whole_or_absent(tls_dir: Path, tmp_path: Path,
                                                               kill_at: float | None) -> None:
    store = tmp_path / "store"
    folder = make_package(tmp_path / "pkg", wasm=padded_wasm(24 << 20), extra={"data/a.bin": os.urandom(1 << 20)})
    key = generate_key()
    policy = RegistryPolicy(frozenset({publisher_id(key)}))
    with registry_process(store, tls_dir) as (proc, host):
        slug = parse_tag_slug(f"{host}/alice/app:0.1.0")
        trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
        with RegistryClient(host, trust) as client:
            register(client)

            def killer(done: int, total: int) -> None:
                if kill_at is not None and done >= kill_at * total and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)

            if kill_at is None:
                publish(client, slug, folder, key, killer)
                os.kill(proc.pid, signal.SIGKILL)  # right after the publish completed
            else:
                with pytest.raises(RegistryError):
                    publish(client, slug, folder, key, killer)
    tags = check_store(store)
    assert tags == ([("0.1.0", 1)] if kill_at is None else [("0.1.0", 0)])

    with registry_process(store, tls_dir) as (_, host):
        slug = parse_tag_slug(f"{host}/alice/app:0.1.0")
        trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
        if kill_at is not None:
            with pytest.raises(RegistryError, match="no tag"):  # nobody sees a half tag
                fetch_package(slug, trust, policy)
            with RegistryClient(host, trust) as client:
                again = publish(client, slug, folder, key)
            assert not again.created  # the pending tag, resumed
        fetched = fetch_package(slug, trust, policy)
        assert fetched.package.wasm == (folder / "main.wasm").read_bytes()
    assert check_store(store) == [("0.1.0", 1)]
    assert list((store / "tmp").iterdir()) == []


def test_one_server_per_store_and_sigterm_stops_it(tls_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with registry_process(store, tls_dir) as (proc, _):
        second = subprocess.run([sys.executable, "-m", "motte", "registry", "serve", "--store", str(store),
                                 "--port", "0"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 125 and "in use by another registry server" in second.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
