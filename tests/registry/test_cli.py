"""The commands as a user runs them: motte user/repo/package against a real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.registry.conftest import TOKEN, make_package


def motte(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "motte", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_the_commands_publish_show_and_fetch_a_signed_package(start_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    env = {"MOTTE_REGISTRY": reg.host, "MOTTE_REGISTRY_CA": str(reg.ca_file),
           "MOTTE_REGISTRY_TOKEN_FILE": str(token_file)}

    keygen = motte("package", "keygen", str(tmp_path / "publisher.key"), "--json", env=env)
    assert keygen.returncode == 0, keygen.stderr
    publisher = json.loads(keygen.stdout)["publisher"]
    assert motte("user", "register", "alice", env=env).stdout.strip() == f"registered {reg.host}/alice"
    assert motte("repo", "register", "alice/app", env=env).returncode == 0
    again = motte("repo", "register", "alice/app", env=env)
    assert again.stdout.strip() == f"{reg.host}/alice/app was registered already"

    folder = make_package(tmp_path / "pkg")
    published = motte("package", "publish", "--sign", str(tmp_path / "publisher.key"), "alice/app:0.1.0",
                      str(folder), "--json", env=env)
    assert published.returncode == 0, published.stderr
    facts = json.loads(published.stdout)
    assert (facts["signer"], facts["nodes"], facts["created"]) == (publisher, 3, True)

    info = motte("repo", "info", "alice/app", "--json", env=env)
    assert json.loads(info.stdout) == {"config": {"public": True}, "tags": ["0.1.0"]}

    shown = motte("package", "info", "alice/app:0.1.0", env=env)
    assert f"signed by {publisher} (not verified" in shown.stdout
    verified = motte("package", "info", "alice/app:0.1.0", "--publisher", publisher, "--json", env=env)
    assert json.loads(verified.stdout)["verified_signer"] == publisher

    policy = tmp_path / "tenant.toml"
    policy.write_text(f'publishers = ["{publisher}"]\n[attestation]\n')
    out = tmp_path / "fetched"
    fetched = motte("package", "fetch", "alice/app:0.1.0", "--policy", str(policy), "--out", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert f"signed by publisher {publisher}; every digest checked" in fetched.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Enarx.toml", "main.wasm"]
    assert (out / "main.wasm").read_bytes() == (folder / "main.wasm").read_bytes()


def test_refusals_exit_1_and_errors_are_one_line(start_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry(token=None)
    env = {"MOTTE_REGISTRY": reg.host, "MOTTE_REGISTRY_CA": str(reg.ca_file)}
    reg.register()
    assert motte("package", "publish", "alice/app:0.1.0", str(make_package(tmp_path / "pkg")), env=env).returncode == 0
    refused = motte("package", "fetch", "alice/app:0.1.0", "--out", str(tmp_path / "out"), env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith("refused: ") and "accepts signed tags only" in refused.stderr
    assert not (tmp_path / "out").exists()  # nothing written
    allowed = motte("package", "fetch", "alice/app:0.1.0", "--allow-unsigned", "--out", str(tmp_path / "out"), env=env)
    assert allowed.returncode == 0 and "UNSIGNED" in allowed.stdout

    missing = motte("package", "info", "alice/app:9.9.9", env=env)
    assert missing.returncode == 125 and missing.stderr.count("\n") == 1
    assert "no tag alice/app:9.9.9" in missing.stderr
    bad = motte("package", "info", "alice/app:latest", env=env)
    assert bad.returncode == 125 and "a tag is a semantic version" in bad.stderr
    untrusted = motte("package", "info", "alice/app:0.1.0", env={"MOTTE_REGISTRY": reg.host})
    assert untrusted.returncode == 125 and "TLS certificate is not trusted" in untrusted.stderr
