"""The Steward and its log against hostile and careless input: files that are no files, a client's
Content-Type made to drive a terminal, and an audit log others could read."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from motte.keep.csr import build_csr, generate_key
from motte.keep.evidence import Evidence
from motte.keep.evidence.encoding import encode_snp_evidence
from motte.shared.steward_certs import spki_der
from motte.shared.steward_protocol import key_binding
from motte.steward.check import check_request
from motte.steward.issuer import new_ca, write_ca
from motte.steward.log import AuditLog, Event
from motte.steward.policy import StewardPolicyError, load_steward_policy, read_steward_policy
from motte.tenant.attest.snp import SIG_S_OFFSET
from motte.tenant.attest.snp_verify import P384_ORDER
from tests.conftest import motte
from tests.steward.fakes import MEASUREMENT, FakeSnp
from tests.steward.serve_process import serve_process
from tests.tenant.attest_forge import NOW, fake_amd


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: what is not made private explicitly is world-readable
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_log_and_its_directory_are_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "state" / "steward" / "steward.db"
    log = AuditLog(path)
    log.append_sync(Event(at="2025-01-01T00:00:00+00:00", verdict="refused", status=400, peer="192.0.2.7"))
    files = [path, path.with_name("steward.db-wal"), path.with_name("steward.db-shm")]
    try:
        assert all(f.exists() for f in files)
        assert [_mode(f) for f in files] == [0o600] * 3
        assert _mode(path.parent) == 0o700
    finally:
        log.close()


def test_an_existing_readable_log_is_made_private_when_opened(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "steward.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()  # (the connection stays open, so the -wal and -shm files stay too)
    files = [path, path.with_name("steward.db-wal"), path.with_name("steward.db-shm")]
    for f in files:
        f.chmod(0o644)
    try:
        AuditLog(path).close()
        assert [_mode(f) for f in files] == [0o600] * 3
    finally:
        conn.close()


def _ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_cert = write_ca(tmp_path / "ca", *new_ca("CA", now=datetime.now(UTC)))
    policy = tmp_path / "policy.toml"
    policy.write_text("")
    return ca_key, ca_cert, policy


def test_the_default_log_directory_is_made_private_even_if_it_exists(tmp_path: Path, umask_022: None) -> None:
    ca_key, ca_cert, policy = _ca(tmp_path)
    directory = tmp_path / "state" / "steward"
    directory.mkdir(parents=True, mode=0o755)
    args = ("--ca-key", str(ca_key), "--ca-cert", str(ca_cert), "--policy", str(policy))
    with serve_process(*args, env={"MOTTE_STATE_DIR": str(tmp_path / "state")}) as server:
        assert server.stop() == 0
    assert _mode(directory) == 0o700 and _mode(directory / "steward.db") == 0o600


def _special(kind: str, tmp_path: Path) -> str:
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # no writer: a plain open would wait for one for ever
        return str(path)
    return "/dev/zero"


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
@pytest.mark.parametrize("option", ["--policy", "--ca-key", "--ca-cert", "attestation_policy"])
def test_files_named_to_the_steward_must_be_regular_files(tmp_path: Path, option: str, kind: str) -> None:
    ca_key, ca_cert, policy = _ca(tmp_path)
    special = _special(kind, tmp_path)
    files = {"--ca-key": str(ca_key), "--ca-cert": str(ca_cert), "--policy": str(policy)}
    if option == "attestation_policy":
        policy.write_text(f'attestation_policy = "{special}"\n')
    else:
        files[option] = special
    started = time.monotonic()
    result = motte("steward", "serve", *(x for pair in files.items() for x in pair), timeout=60,
                   env={"MOTTE_STATE_DIR": str(tmp_path / "state")})
    err = result.stderr.decode()
    assert result.returncode == 125 and len(err.strip().splitlines()) == 1, err
    shown = "a character device" if kind == "/dev/zero" else "a FIFO"
    assert f"{special}: is {shown}, not a regular file" in err
    assert time.monotonic() - started < 30


def test_a_policy_file_is_read_no_further_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    with path.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: costs no disk
    with pytest.raises(StewardPolicyError, match="larger than the"):
        read_steward_policy(path)


def test_a_deeply_nested_policy_is_one_clear_error() -> None:
    with pytest.raises(StewardPolicyError, match="nested too deeply"):
        load_steward_policy("x = " + "[" * 5000, source="policy.toml")
    with pytest.raises(StewardPolicyError, match="nested too deeply"):
        load_steward_policy("[attestation]\nx = " + "{a = " * 5000, source="policy.toml")


def test_the_log_shows_a_clients_content_type_escaped(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hostile = "text/\u009b2j\u009d0\u202e-evil \u2028\u0085"
    with serve_process("--dev", "--state-dir", str(state)) as server:
        url = urlsplit(server.url)
        with socket.create_connection((url.hostname or "", url.port or 0), timeout=30) as client:
            client.sendall(b"POST / HTTP/1.1\r\nHost: steward\r\nContent-Type: " + hostile.encode()
                           + b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
            assert b" 415 " in client.recv(4096).split(b"\r\n")[0]
        assert server.stop() == 0
    shown = motte("steward", "log", "--log", str(state / "steward.db"))
    out = shown.stdout.decode()
    assert shown.returncode == 0 and out.count("\n") == 1, out
    assert "content_type" in out and "\\x9b2j\\x9d0\\u202e-evil" in out
    assert not any(c in out for c in "\u009b\u009d\u202e\u2028\u0085\x1b")
    as_json = motte("steward", "log", "--log", str(state / "steward.db"), "--json").stdout
    assert as_json.isascii() and b"\\u009b" in as_json


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo"])
def test_the_log_command_reads_only_a_regular_file(tmp_path: Path, kind: str) -> None:
    special = _special(kind, tmp_path)
    result = motte("steward", "log", "--log", special, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 125 and len(err.strip().splitlines()) == 1 and "not a regular file" in err, err


def test_the_log_key_of_snp_evidence_is_one_for_every_variant_of_the_report() -> None:
    """s -> n - s and another CRL beside the report change the extension's bytes, not the evidence."""
    platform = FakeSnp.make()
    policy = load_steward_policy(f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
    key = generate_key("snp")
    report = platform.report(key_binding(spki_der(key.public_key()), "snp"))
    s = int.from_bytes(report[SIG_S_OFFSET : SIG_S_OFFSET + 48], "little")
    flipped = report[:SIG_S_OFFSET] + (P384_ORDER - s).to_bytes(48, "little") + report[SIG_S_OFFSET + 48 :]
    variants = [encode_snp_evidence(platform.vcek, [], report), encode_snp_evidence(platform.vcek, [], flipped),
                encode_snp_evidence(platform.vcek, [fake_amd("Milan").crl([])], report)]
    assert len(set(variants)) == 3
    digests = {check_request(build_csr(key, Evidence("snp", evidence)), policy=policy, now=NOW,
                             amd_trust=platform.trust()).evidence_sha256 for evidence in variants}
    assert len(digests) == 1
