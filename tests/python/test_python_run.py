"""``motte run app.py`` end to end: real Python programs on the pinned CPython build, in a real keep.

Most run on nil; ``test_a_program_on_every_backend`` runs on each backend (on kvm the keep compiles
the 14 MB interpreter under emulation, so it is one test doing several checks).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import motte
from tests.net.conftest import connect, free_port, listen_toml, recv_all

pytestmark = pytest.mark.timeout(300)

PROGRAM = '''\
import os, sys, helper
print("argv", sys.argv)
print("env", os.environ.get("GREETING"), sorted(k for k in os.environ if k.startswith(("PATH", "HOME"))))
print("helper", helper.VALUE)
print("stdin", sys.stdin.readline().strip())
print("stdout", os.isatty(1), sys.stdout.line_buffering)
import json, hashlib, decimal
print("stdlib", json.dumps({"sha": hashlib.sha256(b"x").hexdigest()[:8], "d": str(decimal.Decimal("1.10"))}))
sys.stdout.flush()
if sys.argv[1] == "raise":
    raise ValueError("deliberate")
sys.exit(int(sys.argv[1]))
'''


def make_program(base: Path, script: str = "main.py") -> Path:
    folder = base / "project"
    folder.mkdir()
    (folder / script).write_text(PROGRAM)
    (folder / "helper.py").write_text("VALUE = 'imported from the same folder'\n")
    return folder


def run(*args: str, input: bytes = b"", timeout: float = 120, env: dict[str, str] | None = None,
        backend: str = "nil") -> subprocess.CompletedProcess[bytes]:
    return motte("run", "--backend", backend, *args, input=input, timeout=timeout, env=env)


def test_argv_env_stdin_stdlib_and_exit_status_as_with_python(tmp_path: Path) -> None:
    folder = make_program(tmp_path, "app.py")
    result = run("--env", "GREETING=hello", str(folder / "app.py"), "--", "3", "two words", input=b"typed\n")
    assert result.returncode == 3, result.stderr
    assert result.stdout.decode().splitlines() == [
        "argv ['/app/app.py', '3', 'two words']",
        "env hello []",  # what --env gives, nothing of the host's
        "helper imported from the same folder",
        "stdin typed",
        "stdout False False",  # a pipe: not a terminal, so CPython buffers by block
        'stdlib {"sha": "2d711642", "d": "1.10"}',
    ]
    assert result.stderr == b""


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path: Path) -> None:
    folder = make_program(tmp_path)
    result = run(str(folder), "--", "raise")
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "/app/main.py", line 11, in <module>' in stderr
    assert stderr.endswith("ValueError: deliberate\n")


def test_a_folder_runs_its_main_py_with_the_configs_arguments_first(tmp_path: Path) -> None:
    folder = make_program(tmp_path)
    config = tmp_path / "Enarx.toml"
    config.write_text('args = ["0"]\n[env]\nGREETING = "from the file"\n'
                      '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n')
    result = run("--wasmcfgfile", str(config), str(folder), "--", "extra")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:2] == ["argv ['/app/main.py', '0', 'extra']", "env from the file []"]


def test_the_programs_folder_is_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "main.py").write_text(
        "import os, helper\n"
        "for attempt in (lambda: open('/app/new.txt', 'w'), lambda: open('/app/main.py', 'a'),\n"
        "                lambda: os.mkdir('/app/sub'), lambda: os.remove('/app/helper.py')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__, exc.strerror)\n"
    )
    (folder / "helper.py").write_text("")
    before = sorted(p.name for p in folder.iterdir())
    result = run(str(folder))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines() == ["OSError Read-only file system"] * 4
    assert sorted(p.name for p in folder.iterdir()) == before  # and no __pycache__ either


def test_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    result = run(str(tmp_path))
    assert result.returncode == 125 and b"has no main.py" in result.stderr
    folder = make_program(tmp_path)
    result = run("--dir", f"{tmp_path}::/app", str(folder))
    assert result.returncode == 125 and b"the program's folder is served there" in result.stderr


def test_the_interpreter_is_compiled_once_on_nil(tmp_path: Path) -> None:
    folder = make_program(tmp_path)
    env = {"MOTTE_CACHE_DIR": str(tmp_path / "cache")}
    assert run(str(folder), "--", "0", env=env).returncode == 0
    compiled = list((tmp_path / "cache" / "modules").glob("*.cwasm"))
    assert len(compiled) == 1
    made = compiled[0].stat().st_mtime_ns
    assert run(str(folder), "--", "0", env=env).returncode == 0
    assert list((tmp_path / "cache" / "modules").glob("*.cwasm")) == compiled
    assert compiled[0].stat().st_mtime_ns == made  # loaded, not compiled and stored again


def test_motte_s_site_hook_loads_nothing_a_program_does_not_import(tmp_path: Path) -> None:
    program = tmp_path / "probe.py"
    program.write_text("import sys\nprint(sorted(m for m in ('socket', 'typing', 'importlib.machinery') "
                       "if m in sys.modules), 'sitecustomize' in sys.modules)\n")
    result = run(str(program))
    assert (result.returncode, result.stdout) == (0, b"[] True\n"), result.stderr


SERVER = '''\
import socket, sys
listener = socket.socket(fileno=3)  # as natively: no family, type or protocol given
print("listening", listener.family == socket.AF_INET, listener.type == socket.SOCK_STREAM, flush=True)
count = int(sys.argv[1])
for _ in range(count):
    conn, _address = listener.accept()
    with conn:
        request = b""
        while not request.endswith(b"\\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        conn.sendall(b"hello " + request)
print("served", count, flush=True)
'''


def test_a_tls_server_on_fd_3_of_an_enarx_toml_serves_clients(tmp_path: Path) -> None:
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "main.py").write_text(SERVER)
    port = free_port()
    config = tmp_path / "Enarx.toml"
    config.write_text(listen_toml(port))
    process = subprocess.Popen(
        [sys.executable, "-m", "motte", "run", "--backend", "nil", "--wasmcfgfile", str(config), str(folder),
         "--", "3"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"listening True True\n"
        for number in range(3):  # one after another: each is accepted, answered and closed
            client = connect(port)
            # TLS ends inside the keep: the program reads and writes plaintext.
            assert isinstance(client, ssl.SSLSocket) and client.version() == "TLSv1.3"
            client.sendall(f"client {number}\n".encode())
            assert recv_all(client) == f"hello client {number}\n".encode()
            client.close()
        assert process.stdout.readline() == b"served 3\n"
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_program_on_every_backend(backend: str, tmp_path: Path) -> None:
    folder = make_program(tmp_path)
    result = run(str(folder), "--", "5", input=b"in\n", backend=backend, timeout=600 if backend == "kvm" else 120)
    assert result.returncode == 5, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "argv ['/app/main.py', '5']"
    assert lines[2:4] == ["helper imported from the same folder", "stdin in"]
    assert lines[5] == 'stdlib {"sha": "2d711642", "d": "1.10"}'
    assert os.path.isdir(folder) and sorted(p.name for p in folder.iterdir()) == ["helper.py", "main.py"]
