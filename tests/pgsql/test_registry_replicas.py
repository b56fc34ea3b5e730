"""Two registry replicas (two processes) behind one address: both listen on the same port with
SO_REUSEPORT and share one store folder and one PostgreSQL database. A tag published twice with
different content, once through each replica, is taken once and refused the other time, and
neither replica ever serves half a package, even when the one receiving the publish is killed.

Which replica a connection reached is read from Linux's /proc: the process that holds the server
end of that TCP connection."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from motte.registry.formats import parse_tag_slug
from motte.registry.signing import generate_key, publisher_id
from motte.tenant.registry.client import RegistryClient, RegistryError, RegistryTrust
from motte.tenant.registry.fetch import fetch_package, fetch_tree, package_of
from motte.tenant.registry.policy import RegistryPolicy
from motte.tenant.registry.publish import publish
from tests.conftest import motte
from tests.registry.conftest import TOKEN, make_package, padded_wasm, register
from tests.registry.test_crash import registry_process

ATTEMPTS = 64  # connections tried to reach a given replica; the kernel picks each at random


def replica(store: Path, dsn: str, tls_dir: Path, port: int = 0
            ) -> AbstractContextManager[tuple[subprocess.Popen[bytes], str]]:
    return registry_process(store, tls_dir, dsn, "--reuse-port", "--port", str(port))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def serving_pid(sock: socket.socket, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server end of ``sock``'s (IPv4, accepted) TCP connection."""

    def hex_address(address: tuple[str, int]) -> str:  # as /proc/net/tcp writes it
        return f"{socket.inet_aton(address[0])[::-1].hex().upper()}:{address[1]:04X}"

    server_end, client_end = hex_address(sock.getpeername()), hex_address(sock.getsockname())
    inodes = {fields[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if (fields := line.split())[1:3] == [server_end, client_end]}
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:  # the process has ended
            continue
        for fd in fds:
            with contextlib.suppress(FileNotFoundError):  # (closed meanwhile)
                if os.readlink(fd) in wanted:
                    return pid
    return None


def reached(client: RegistryClient, pids: list[int]) -> int | None:
    """The replica ``client``'s connection went to (connecting first if it has none: after the TLS
    handshake the server has accepted it)."""
    conn = client._conn  # (the test looks at the socket the client keeps alive)
    if conn.sock is None:
        conn.connect()
    return serving_pid(conn.sock, pids)


def client_on(pid: int, address: str, trust: RegistryTrust, pids: list[int]) -> RegistryClient:
    """A client connected through ``address`` to the replica ``pid``."""
    for _ in range(ATTEMPTS):
        client = RegistryClient(address, trust)
        if reached(client, pids) == pid:
            return client
        client.close()
    raise AssertionError(f"no connection through {address} reached replica {pid} in {ATTEMPTS} attempts")


def test_one_tag_two_contents_two_replicas_one_address_one_wins(tls_dir: Path, tmp_path: Path,
                                                                 postgres_dsn: Callable[[], str]) -> None:
    dsn, store = postgres_dsn(), tmp_path / "store"
    key = generate_key()
    policy = RegistryPolicy(frozenset({publisher_id(key)}))
    folders = [make_package(tmp_path / f"pkg{n}", wasm=padded_wasm(4 << 20)) for n in (0, 1)]
    trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
    with replica(store, dsn, tls_dir) as (first, address), \
            replica(store, dsn, tls_dir, port_of(address)) as (second, other_address):
        assert other_address == address, "both replicas listen on one address"
        pids = [first.pid, second.pid]
        slug = parse_tag_slug(f"{address}/alice/app:1.0.0")
        with RegistryClient(address, trust) as client:
            register(client)
        outcomes: list[object] = [None, None]
        clients = [client_on(pid, address, trust, pids) for pid in pids]  # publisher n goes to replica n

        def publish_through(n: int) -> None:
            try:
                publish(clients[n], slug, folders[n], key)
                outcomes[n] = "published"
            except RegistryError as exc:
                outcomes[n] = exc

        threads = [threading.Thread(target=publish_through, args=(n,)) for n in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for client in clients:
            client.close()
        assert outcomes.count("published") == 1, outcomes
        winner = outcomes.index("published")
        refusal = str(outcomes[1 - winner])
        assert "tag_exists" in refusal or "tag_pending" in refusal or "other content" in refusal, refusal
        # Both replicas serve the winner's package, whole; once it is published, the loser's
        # content is refused as the immutable tag it is, by either replica.
        for pid in pids:
            with client_on(pid, address, trust, pids) as client:
                fetched = package_of(fetch_tree(client, slug, policy))
                assert fetched.wasm == (folders[winner] / "main.wasm").read_bytes()
            with client_on(pid, address, trust, pids) as client, \
                    pytest.raises(RegistryError, match="a tag never changes"):
                publish(client, slug, folders[1 - winner], key)


def test_a_replica_killed_mid_publish_leaves_nothing_half_served(tls_dir: Path, tmp_path: Path,
                                                                 postgres_dsn: Callable[[], str]) -> None:
    dsn, store = postgres_dsn(), tmp_path / "store"
    key = generate_key()
    policy = RegistryPolicy(frozenset({publisher_id(key)}))
    folder = make_package(tmp_path / "pkg", wasm=padded_wasm(16 << 20), extra={"data/a.bin": os.urandom(1 << 20)})
    trust = RegistryTrust(tls_dir / "steward-tls-ca.pem", token=TOKEN)
    with replica(store, dsn, tls_dir) as (doomed, address):
        slug = parse_tag_slug(f"{address}/alice/app:0.1.0")
        publisher = RegistryClient(address, trust)
        register(publisher)  # its connection reaches the only replica yet: the one to be killed
        with replica(store, dsn, tls_dir, port_of(address)) as (survivor, _):
            pids = [doomed.pid, survivor.pid]
            assert reached(publisher, pids) == doomed.pid
            watcher = client_on(survivor.pid, address, trust, pids)
            seen_by_survivor: list[str] = []

            def kill_halfway(done: int, total: int) -> None:
                if done >= total // 2 and doomed.poll() is None:
                    try:  # the other replica, mid-publish: no tag yet
                        fetch_tree(watcher, slug, policy)
                        seen_by_survivor.append("a half-published tag was served")
                    except RegistryError as exc:
                        seen_by_survivor.append(str(exc))
                    os.kill(doomed.pid, signal.SIGKILL)
                    doomed.wait(10)

            with publisher, pytest.raises(RegistryError):
                publish(publisher, slug, folder, key, kill_halfway)
            watcher.close()
            assert len(seen_by_survivor) == 1 and "no tag" in seen_by_survivor[0], seen_by_survivor
            # The same address, now served by the survivor alone: still no tag, and the publisher
            # resumes there.
            with pytest.raises(RegistryError, match="no tag"):
                fetch_package(slug, trust, policy)
            with RegistryClient(address, trust) as client:
                assert reached(client, pids) == survivor.pid
                assert not publish(client, slug, folder, key).created
            fetched = fetch_package(slug, trust, policy)
            assert fetched.package.wasm == (folder / "main.wasm").read_bytes()


def test_replicas_on_a_sqlite_store_are_refused_in_one_line(tmp_path: Path) -> None:
    result = motte("registry", "serve", "--store", str(tmp_path / "store"), "--reuse-port", "--port", "0")
    assert result.returncode == 125
    assert result.stderr.decode().splitlines() == [
        "motte: error: --reuse-port runs replicas, and registry replicas share a store only with a postgresql:// "
        "--database (give --database postgresql://..., or drop --reuse-port)"]
    assert not (tmp_path / "store").exists(), "refused before anything was made"
