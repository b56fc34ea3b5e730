"""``motte run`` end to end: real workloads, a real keep process, the real channel.

The backend fixture runs every test on each backend this host supports (see conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import descendants, motte
from tests.workloads import sha256_reference

pytestmark = pytest.mark.timeout(300)


def run(backend: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return motte("run", "--backend", backend, *args, **kwargs)  # type: ignore[arg-type]


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_hello(backend: str, wasm) -> None:
    result = run(backend, wasm("hello"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"Hello from a motte keep!\n"
    assert b"Traceback" not in result.stderr


def test_hand_written_wat_module(backend: str, wasm) -> None:
    result = run(backend, wasm("hello_wat"))
    assert (result.returncode, result.stdout) == (0, b"hello from wat\n")


def test_args_and_env_from_cli_and_config(backend: str, wasm, tmp_path: Path) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(
        'args = ["--from-file"]\n[env]\nGREETING = "hello"\nSHARED = "file"\n'
        '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'
    )
    result = run(backend, "--wasmcfgfile", str(config), "--env", "SHARED=cli", "--env", "EMPTY=",
                 wasm("args_env"), "--", "--flag", "value with spaces")
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert out[:4] == ["argv[0]=main.wasm", "argv[1]=--from-file", "argv[2]=--flag", "argv[3]=value with spaces"]
    env = {line[4:] for line in out if line.startswith("env:")}
    assert {"GREETING=hello", "SHARED=cli", "EMPTY=", "FD_COUNT=3", "FD_NAMES=stdin:stdout:stderr"} <= env
    assert not any(key.startswith(("PATH=", "HOME=")) for key in env)  # nothing of the host's leaks in


def test_fd_count_and_names_follow_the_files_list(backend: str, wasm, tmp_path: Path) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(
        '[[files]]\nkind = "null"\n[[files]]\nkind = "stdout"\nname = "out"\n'
        '[[files]]\nkind = "stderr"\n[[files]]\nkind = "null"\nname = "spare"\n'
    )
    result = run(backend, "--wasmcfgfile", str(config), wasm("fds"))
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert out[0] == "FD_COUNT=4"
    assert out[1] == "FD_NAMES=null:out:stderr:spare"
    # null files are character devices; stdout and stderr are this test's pipes: no terminal (0, unknown)
    assert [line.split(" rights")[0] for line in out[2:6]] == [
        "fd 0: filetype=2", "fd 1: filetype=0", "fd 2: filetype=0", "fd 3: filetype=2"]


def test_stdin_is_echoed_byte_for_byte(backend: str, wasm) -> None:
    data = os.urandom(3 << 20)
    result = run(backend, wasm("echo"), input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_stdin_lines_until_eof(backend: str, wasm) -> None:
    result = run(backend, wasm("stdin_lines"), input=b"first\nsecond line\n")
    assert lines(result.stdout) == ["line 1: first", "line 2: second line", "eof"]


@pytest.mark.parametrize("status", [0, 1, 42, 125, 255])
def test_proc_exit_status_becomes_motte_s(backend: str, wasm, status: int) -> None:
    result = run(backend, wasm("exit"), "--", str(status))
    assert result.returncode == status
    assert result.stderr == b""


def test_files_in_a_preopened_dir_and_no_escape(backend: str, wasm, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_text("secret outside the sandbox")
    (tmp_path / "outside.txt").write_text("secret beside the sandbox")  # what <dir>/../outside.txt names
    (data / "input.txt").write_text("from the host")
    (data / "link-out").symlink_to(outside)
    # The absolute probe names a file that exists, by the host's own path: an escape would open it.
    result = run(backend, "--dir", f"{data}::/data", wasm("files"), "--", "/data", str(outside / "x"))
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "input: from the host" in out
    escapes = dict(line.split(": ", 1) for line in out.splitlines() if line.startswith("escape "))
    # Every one refused by motte's confinement (WASI ENOTCAPABLE), not by a file that is not there.
    probes = ("dotdot-open", "absolute-open", "symlink-open", "symlink-dir", "dotdot-create", "dotdot-rename")
    assert escapes == {f"escape {probe}": "denied errno=76" for probe in probes}, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "outside", "outside.txt"]  # nothing created
    assert (outside / "x").read_text() == "secret outside the sandbox"


def test_clocks_and_random(backend: str, wasm) -> None:
    first = dict(line.split("=", 1) for line in lines(run(backend, wasm("clock_random")).stdout))
    second = dict(line.split("=", 1) for line in lines(run(backend, wasm("clock_random")).stdout))
    import time

    assert abs(int(first["realtime"]) / 1e9 - time.time()) < 120
    assert int(first["monotonic2"]) - int(first["monotonic1"]) >= 50_000_000
    assert 50 <= int(first["slept_ms"]) < 2000
    assert len({first["random"], first["random2"], second["random"]}) == 3
    assert int(first["clock_res"]) >= 1


def test_poll_sees_stdin_and_times_out(backend: str, wasm) -> None:
    ready = run(backend, wasm("poll"), input=b"abc")
    assert lines(ready.stdout) == ["stdin-ready", "read=3"]
    # A pipe that stays open and silent: the 200 ms clock subscription fires first.
    process = subprocess.Popen([sys.executable, "-m", "motte", "run", "--backend", backend, wasm("poll")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = process.stdout.read()  # type: ignore[union-attr]  # ends when motte exits, stdin still open
    finally:
        process.stdin.close()  # type: ignore[union-attr]
    process.wait(timeout=60)
    assert lines(out) == ["timeout"]


def test_cpu_bound_result_matches_the_reference(backend: str, wasm) -> None:
    result = run(backend, wasm("sha256"), "--", "4")
    assert result.stdout.decode().strip() == f"sha256={sha256_reference(4)} mib=4"


def test_memory_limit_ends_the_workload_with_its_own_status(backend: str, wasm) -> None:
    result = run(backend, "--max-memory", "4M", wasm("memgrow"))
    assert result.returncode == 137
    assert b"memory limit of 4 MiB" in result.stderr
    assert b"Traceback" not in result.stderr


def test_a_refused_grow_ends_a_workload_that_would_carry_on(backend: str, wasm) -> None:
    # memhog handles malloc failure itself (prints and exits 3); the cap still ends it, and says so.
    result = run(backend, "--max-memory", "32M", wasm("memhog"), "--", "64")
    assert result.returncode == 137
    assert b"memory limit of 32 MiB" in result.stderr and b"was refused" in result.stderr
    assert b"malloc failed" not in result.stdout


def test_a_workload_within_its_cap_is_not_disturbed(backend: str, wasm) -> None:
    result = run(backend, "--max-memory", "256M", wasm("memhog"), "--", "64")
    assert result.returncode == 0, result.stderr
    assert lines(result.stdout)[-1] == "done 64"


def test_a_module_that_needs_more_than_the_cap_is_refused_up_front(backend: str, wasm) -> None:
    result = run(backend, "--max-memory", "1M", wasm("hello"))
    assert result.returncode == 125
    assert b"exceeds the memory limit" in result.stderr and b"--max-memory" in result.stderr


def test_timeout_interrupts_a_busy_loop(backend: str, wasm) -> None:
    result = run(backend, "--timeout", "1", wasm("spin"), "--", "--print")
    assert result.returncode == 124
    assert result.stdout == b"spinning\n"
    assert b"1 s deadline" in result.stderr


def test_timeout_interrupts_a_blocked_read(backend: str, wasm) -> None:
    process = subprocess.Popen([sys.executable, "-m", "motte", "run", "--backend", backend, "--timeout", "1",
                                wasm("echo")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.wait(timeout=60) == 124
    finally:
        process.stdin.close()  # type: ignore[union-attr]
        process.kill()
        process.wait()


def test_trap_shows_the_wasm_backtrace(backend: str, wasm) -> None:
    result = run(backend, wasm("trap"))
    assert result.returncode == 134
    err = result.stderr.decode()
    assert "unreachable" in err
    assert err.index("inner") < err.index("outer") < err.index("_start")
    assert "Traceback" not in err


def test_abort_is_a_trap(backend: str, wasm) -> None:
    assert run(backend, wasm("exit"), "--", "abort").returncode == 134


def test_output_reader_that_goes_away_does_not_hang_the_keep(backend: str, wasm) -> None:
    pipeline = subprocess.run(
        f"{sys.executable} -m motte run --backend {backend} {wasm('writer')} -- 64 4096 | head -c 100 >/dev/null",
        shell=True, timeout=120, capture_output=True,
    )
    assert pipeline.returncode == 0


def test_large_stdout_arrives_intact(backend: str, wasm) -> None:
    from tests.workloads import writer_expected

    result = run(backend, wasm("writer"), "--", "8", "4096")
    assert result.returncode == 0
    assert result.stdout == writer_expected(8 << 20)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_no_keep_is_left_behind_when_motte_is_stopped(backend: str, wasm, signal_name: str) -> None:
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "motte", "run", "--backend", backend, wasm("spin"), "--",
                                "--print"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None and process.stdout.readline() == b"spinning\n"
        keep_processes = descendants(process.pid)
        assert keep_processes
        process.send_signal(getattr(signal, signal_name))
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in keep_processes):
            time.sleep(0.05)
        survivors = [pid for pid in keep_processes if Path(f"/proc/{pid}").exists()
                     and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
        assert survivors == []
    finally:
        process.kill()
        process.wait()
