"""``motte host serve`` as a user runs it: the ready line, a keep through it, SIGTERM, and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from motte.outside.agent_api import KeepRequest
from motte.tenant.agent_client import AgentClient
from tests.agent.conftest import gone
from tests.agent.test_api import TOKEN, until_state
from tests.conftest import motte


def test_serve_until_sigterm(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    command = [sys.executable, "-m", "motte", "host", "serve", "--port", "0", "--backend", "nil", "--json",
               "--token-file", str(token_file), "--max-keeps", "3", "--warm", "nil=2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as agent:
        try:
            assert agent.stdout is not None
            ready = json.loads(agent.stdout.readline())
            assert ready["backends"] == ["nil"] and ready["default_backend"] == "nil" and ready["warm"] == {"nil": 2}

            client = AgentClient(ready["url"], token=TOKEN)
            info = client.info()
            assert info["limits"]["max_keeps"] == 3 and info["warm"]["nil"]["size"] == 2
            created = client.create(KeepRequest(memory=64 << 20))
            record = until_state(client, created.id, "provisioning", "running", "exited", "failed")
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=30)
        finally:
            if agent.poll() is None:
                agent.kill()
    assert agent.returncode == 0, stderr.decode()
    lines = stderr.decode().splitlines()
    assert lines[-1] == "motte host: stopped"
    assert any(f"keep {record.id}: starting (backend nil" in line for line in lines)
    assert record.pid is not None and gone(record.pid)


def test_an_exposed_address_needs_a_token() -> None:
    result = motte("host", "serve", "--addr", "0.0.0.0", "--port", "0")
    assert result.returncode == 125
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("motte: error: refusing to serve the host agent on 0.0.0.0 without a token")


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    os.chmod(token_file, 0o644)
    result = motte("host", "serve", "--port", "0", "--token-file", str(token_file))
    assert result.returncode == 125 and b": readable by others" in result.stderr


def test_help() -> None:
    result = motte("host", "serve", "--help")
    assert result.returncode == 0 and b"--unix" in result.stdout and b"7313" in result.stdout
