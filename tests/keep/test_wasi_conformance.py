"""WASI preview1 as the WASI testsuite and wasmtime have it, checked against wasmtime itself.

The ``wasi_rights``, ``wasi_paths`` and ``wasi_stdio`` workloads (tests/workloads) print one line
per step. Each runs in a keep (``motte run``, as a user runs it) and, as the reference, under
wasmtime-py's own WASI (wasmtime's preview1), with the same directory and the same kind of
stdout. Then:

- the keep prints the expected output (in ``wasi_expected/``) exactly;
- every step taken from a test of the WASI testsuite (WebAssembly/wasi-testsuite,
  ``tests/rust/wasm32-wasip1/src/bin/`` and ``tests/c/src/``) gives an answer that test accepts
  (:data:`TESTSUITE`);
- wasmtime prints the same, line for line, except for the steps :data:`WASMTIME_DIFFERS` lists,
  each with what wasmtime prints and why the keep does not.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tests.net.conftest import free_port, listen_toml
from tests.workloads import workload

from motte.host.platform import kvm_usable

pytestmark = pytest.mark.timeout(300)
KVM_USABLE, KVM_REASON = kvm_usable()

EXPECTED = Path(__file__).parent / "wasi_expected"

REFERENCE = Path(__file__).parents[1] / "workloads" / "wasmtime_wasi.py"

#: step -> the answers the WASI testsuite's test (named in the comment) accepts.
TESTSUITE: dict[str, set[str]] = {
    # path_open_preopen.rs
    "preopen base has the directory rights": {"ok 1"},
    "preopen inheriting has the file rights": {"ok 1"},
    "reopen with its own rights": {"ok"},
    "reopen with no rights": {"ok"},
    "reopen O_DIRECTORY with no rights": {"ok"},
    "reopen O_DIRECTORY with read": {"ok"},
    "reopen O_DIRECTORY with read+write": {"errno=31"},
    # fd_fdstat_set_rights.rs (run because fd_fdstat_set_rights is not NOTSUP)
    "drop read and write": {"ok"},
    "rights after the drop": {"ok read=0 write=0 seek=1"},
    "read without the right": {"errno=8", "errno=76"},
    "write without the right": {"errno=8", "errno=76"},
    "regrant": {"errno=76"},
    # path_open_read_write.rs
    "read-only rights": {"ok read=1 write=0"},
    "read-only write": {"errno=8", "errno=76", "errno=2"},
    "write-only rights": {"ok read=0 write=1"},
    "write-only read": {"errno=8", "errno=76", "errno=2"},
    "write-only write": {"ok n=50"},
    "read-write rights": {"ok read=1 write=1"},
    "read-write read": {"ok n=50"},
    "read-write size": {"ok 75"},
    # truncation_rights.rs (run because the directory has path_filestat_set_size)
    "trunc dir": {"ok type=3 flags=0 fd_set_size=0 path_set_size=1"},
    "truncate": {"ok"},
    "drop inherited fd_set_size": {"ok"},
    "truncate without fd_set_size": {"ok"},
    "drop path_set_size": {"ok"},
    "path_set_size after the drop": {"ok 0"},
    "truncate without path_set_size": {"errno=63", "errno=76"},
    # dir_fd_op_failures.rs
    "prestat_dir_name into 0 bytes": {"errno=28", "errno=37"},
    "prestat_dir_name into more than enough": {"ok"},
    **{f"reopened {call}": {"errno=31", "errno=8", "errno=76"} for call in (
        "fd_read", "fd_pread", "fd_write", "fd_pwrite", "fd_seek cur", "fd_seek set", "fd_seek end", "fd_tell",
        "fd_allocate")},
    "reopened fd_filestat_set_size": {"errno=31", "errno=28", "errno=8", "errno=76"},
    "reopened filestat filetype": {"ok 3"},
    # directory_seek.rs
    "open a directory asking for seek": {"ok"},
    "seek on it": {"errno=31", "errno=76", "errno=8"},
    "its fdstat": {"ok type=3 seek=0"},
    # unlink_file_trailing_slashes.rs (unix answers)
    "unlink dir": {"errno=31"},
    "unlink dir/": {"errno=31"},
    "unlink file/": {"errno=54"},
    # remove_directory_trailing_slashes.rs
    "rmdir dir/": {"ok", "errno=2"},
    "rmdir file": {"errno=54"},
    "rmdir file/": {"errno=54"},
    # path_symlink_trailing_slashes.rs (unix answers)
    "symlink to target/ (dangling)": {"errno=44"},
    "symlink onto a dir as target/": {"errno=20"},
    "symlink onto a dir as target": {"errno=20"},
    "symlink onto a file as target/": {"errno=54"},
    "symlink onto a file as target": {"errno=20"},
    # path_link.rs
    "link file to link/": {"errno=44"},
    "link file to itself": {"errno=20"},
    "link file onto a dir": {"errno=20"},
    "link a dir": {"errno=63", "errno=2"},
    "link a dangling symlink": {"ok"},
    "link onto a dangling symlink": {"errno=20"},
    "link following a dangling symlink": {"errno=28", "errno=44"},
    # path_rename_dir_trailing_slashes.rs
    "rename source/ to target": {"ok"},
    "rename target to source/": {"ok"},
    "rename source/ to target/": {"ok"},
    "rename target to source": {"ok"},
    # interesting_paths.rs
    "open nested/file/": {"errno=54", "errno=44"},
    "open nested/file///": {"errno=54", "errno=44"},
    "open nested/": {"ok"},
    "open nested///": {"ok"},
    "open /nested/file": {"errno=63", "errno=76"},
    "open nested/.//../nested/./file": {"ok"},
    "open nested/../../x": {"errno=63", "errno=76"},
    # path_open_dirfd_not_dir.rs
    "path_open beneath a file": {"errno=54"},
    # pwrite-with-append.c: POSIX writes at 0, Linux appends; the offset stays
    "pwrite 3 at 0": {"ok"},
    "offset after pwrite": {"ok 4"},
    "size after pwrite": {"ok 4", "ok 7"},
    # renumber.rs
    "renumber onto a closed fd": {"errno=8"},
    # stdio.rs
    "renumber stdin onto it": {"ok"},
    "fdstat of the target": {"ok"},
    "fdstat of stdin": {"errno=8"},
}

_NO_RIGHTS = "wasmtime has no rights model: fd_fdstat_set_rights is NOTSUP (the testsuite then skips its rights steps)"
_NOT_NARROWED = "wasmtime does not narrow a new fd's rights to its directory's inheriting rights"

#: workload -> step -> (what wasmtime 50 prints instead, why the keep differs).
WASMTIME_DIFFERS: dict[str, dict[str, tuple[str, str]]] = {
    "wasi_rights": {
        **{step: ("errno=58", _NO_RIGHTS) for step in (
            "drop read and write", "regrant", "drop seek", "drop tell", "drop every right",
            "drop inherited fd_set_size", "drop path_set_size", "drop create_file", "drop readdir",
            "drop create_directory", "drop symlink", "drop unlink_file", "drop path_filestat_get", "drop path_open")},
        **{step: ("ok", _NO_RIGHTS) for step in (
            "read without the right", "write without the right", "pread without the right",
            "seek without the right", "tell without the right", "filestat without the right",
            "set_size without the right", "truncate without path_set_size", "create without the right",
            "readdir without the right", "mkdir without the right", "symlink without the right",
            "unlink without the right")},
        "rights after the drop": ("ok read=1 write=1 seek=1", _NO_RIGHTS),
        "stat a path without the right": ("errno=44", _NO_RIGHTS + "; the path was not created either"),
        "open without the right": ("errno=44", _NO_RIGHTS + "; the path was not created either"),
        "unlink narrow/old": ("errno=44", "wasmtime unlinked it in the step before"),
        "rmdir narrow": ("errno=55", "what wasmtime created without the rights is still there"),
        "trunc dir": ("ok type=3 flags=0 fd_set_size=0 path_set_size=0", _NO_RIGHTS),
        "rights when none are asked": ("ok 0x3fffffbf", "wasmtime gives a file opened to read every right but write"),
        "rights it got": ("ok read=1 write=1", _NOT_NARROWED),
        "write through it": ("ok", _NOT_NARROWED),
        "rights sub got": ("ok create_file=1 open=1", _NOT_NARROWED),
        "create in sub": ("ok", _NOT_NARROWED),
        "rmdir sub": ("errno=55", "the file wasmtime created is still there"),
        "libc ftruncate on O_RDONLY": ("errno=28", "wasmtime passes Linux's EINVAL on; without the right: EBADF"),
        "cleaned up": ("errno=55", "what wasmtime created without the rights is still there"),
    },
    "wasi_paths": {
        "rmdir dir/": ("errno=28", "the testsuite expects success; wasmtime's own expectations skip this test"),
        "link following a dangling symlink": ("errno=28", "wasmtime refuses SYMLINK_FOLLOW; the keep follows"),
        "open /nested/file": ("errno=63", "an absolute path is no capability: NOTCAPABLE, as for any escape"),
        "open nested/../../x": ("errno=63", "a path out of the directory is no capability: NOTCAPABLE"),
    },
}


def keep_command(name: str, *args: str, data: Path | None = None, backend: str = "nil",
                 options: tuple[str, ...] = ()) -> list[str]:
    dirs = ["--dir", f"{data}::/data"] if data is not None else []
    return [sys.executable, "-m", "motte", "run", "--backend", backend, *options, *dirs, str(workload(name)), "--",
            *args]


def reference_command(name: str, *args: str, data: Path | None = None) -> list[str]:
    return [sys.executable, str(REFERENCE), str(workload(name)), "-", f"{data}::/data" if data else "", *args]


def output_of(command: list[str], stdout: str = "pipe", timeout: float = 240) -> str:
    """What ``command`` prints on a stdout that is a ``pipe``, a ``file`` or a ``terminal``."""
    if stdout == "terminal":
        return _on_a_terminal(command, timeout)
    with tempfile.TemporaryFile() as sink:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sink if stdout == "file" else subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout, check=False)
        sink.seek(0)
        text = (sink.read() if stdout == "file" else done.stdout).decode()
    assert done.returncode == 0, text + done.stderr.decode()
    return text


def _on_a_terminal(command: list[str], timeout: float) -> str:
    controller, terminal = pty.openpty()
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=terminal, stderr=subprocess.PIPE) as process:
        os.close(terminal)
        chunks = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(controller, 1 << 16)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not data:
                break
            chunks += data
        os.close(controller)
        assert process.wait(timeout=30) == 0, process.stderr.read().decode() if process.stderr else ""
    return chunks.decode().replace("\r\n", "\n")


def steps(output: str) -> dict[str, str]:
    result = dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)
    assert len(result) == len([line for line in output.splitlines() if ": " in line]), "a step name repeats"
    return result


def check_against_the_testsuite(output: str) -> None:
    for step, answer in steps(output).items():
        allowed = TESTSUITE.get(step, {answer})
        assert answer in allowed, f"{step}: {answer}, the testsuite accepts {sorted(allowed)}"


def check_against_wasmtime(output: str, reference: str, name: str) -> None:
    ours, theirs = steps(output), steps(reference)
    assert ours.keys() == theirs.keys()
    differs = {step: theirs[step] for step in ours if ours[step] != theirs[step]}
    assert differs == {step: answer for step, (answer, _) in WASMTIME_DIFFERS.get(name, {}).items()}


@pytest.mark.parametrize("name", ["wasi_rights", "wasi_paths"])
def test_files_and_paths_as_the_testsuite_and_wasmtime_have_them(name: str, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "keep", tmp_path / "wasmtime"
    ours.mkdir()
    theirs.mkdir()
    output = output_of(keep_command(name, "/data", data=ours))
    assert output == (EXPECTED / f"{name}.txt").read_text()
    check_against_the_testsuite(output)
    check_against_wasmtime(output, output_of(reference_command(name, "/data", data=theirs)), name)
    assert not list(ours.iterdir())  # the workload cleaned up after itself
    if name == "wasi_paths":  # after fd_renumber, fd_readdir lists the directory the fd now is
        assert steps(output)["list two from cookie 2"] == "ok a1 a2"


@pytest.mark.parametrize("stdout", ["pipe", "file", "terminal"])
def test_stdio_is_what_the_hosts_stdio_is(stdout: str) -> None:
    output = output_of(keep_command("wasi_stdio", "stdio"), stdout)
    assert output == output_of(reference_command("wasi_stdio", "stdio"), stdout)
    lines = steps(output)
    filetype = 2 if stdout == "terminal" else 0  # a character device only for a terminal, else unknown
    assert lines["fd 1 fdstat"] == f"ok filetype={filetype} read=0 write=1 seek=0 tell=0"
    assert lines["fd 1 isatty"] == f"ok {int(stdout == 'terminal')}"
    assert lines["fd 0 fdstat"] == "ok filetype=0 read=1 write=0 seek=0 tell=0"  # stdin: /dev/null here
    assert lines["stdout fd_seek"] == "errno=70" and lines["stdout fd_read"] == "errno=8"


def test_the_environment_is_the_command_lines_without_a_config_file(tmp_path: Path) -> None:
    assert output_of(keep_command("wasi_stdio", "env")) == output_of(reference_command("wasi_stdio", "env"))
    assert output_of(keep_command("wasi_stdio", "env")).splitlines()[:2] == [
        "environ_sizes_get count: ok 0", "environ count: ok 0"]
    given = output_of(keep_command("wasi_stdio", "env", options=("--env", "A=1", "--env", "B=")))
    assert [line for line in given.splitlines() if line.startswith("env ")] == ["env A=1", "env B="]
    config = tmp_path / "Enarx.toml"
    config.write_text('[env]\nA = "1"\n[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n')
    with_file = output_of(keep_command("wasi_stdio", "env", options=("--wasmcfgfile", str(config))))
    assert [line for line in with_file.splitlines() if line.startswith("env ")] == [
        "env A=1", "env FD_COUNT=2", "env FD_NAMES=stdin:stdout"]


def test_renumbering_stdio_and_closed_fds(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "keep", tmp_path / "wasmtime"
    ours.mkdir()
    theirs.mkdir()
    output = output_of(keep_command("wasi_stdio", "renumber", data=ours))
    assert output == (EXPECTED / "wasi_stdio_renumber.txt").read_text()
    assert output == output_of(reference_command("wasi_stdio", "renumber", data=theirs))
    check_against_the_testsuite(output)


def test_every_testsuite_step_is_one_a_workload_takes() -> None:
    taken = set().union(*(steps(path.read_text()).keys() for path in EXPECTED.glob("*.txt")))
    assert set(TESTSUITE) <= taken


def _fed_slowly(command: list[str]) -> str:
    """Run ``command``, giving its stdin a line after 0.5 s and another after 1 s."""
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdin is not None
        for line in (b"first\n", b"second\n"):
            time.sleep(0.5)
            process.stdin.write(line)
            process.stdin.flush()
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
    return stdout.decode()


def test_poll_with_a_clock_beyond_2_63_ns_waits_for_the_other_events() -> None:
    output = _fed_slowly(keep_command("wasi_stdio", "poll"))
    assert output == _fed_slowly(reference_command("wasi_stdio", "poll"))
    assert output.splitlines() == ["poll with a clock of 2^64-1 ns: ok first=stdin", "read: ok n=6",
                                   "poll with a clock of 2^63 ns: ok first=stdin"]


def test_sleeping_for_ever_is_no_trap() -> None:
    """Rust's sleep(Duration::MAX): one relative clock of 2^64-1 ns. The workload sleeps until stopped."""
    with subprocess.Popen(keep_command("wasi_stdio", "sleep"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == b"sleeping\n"
        time.sleep(1.5)
        still_running = process.poll() is None
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert still_running, stderr.decode()
    assert b"trap" not in stderr and b"internal error" not in stderr


def test_sockets_say_they_are_sockets(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "Enarx.toml"
    config.write_text(listen_toml(port, prot="tcp"))
    command = keep_command("wasi_stdio", "socket", options=("--wasmcfgfile", str(config)))
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        lines = [process.stdout.readline().decode().rstrip("\n") for _ in range(4)]
        with socket.create_connection(("127.0.0.1", port), timeout=30):
            stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    lines += stdout.decode().splitlines()
    for fd in ("listen", "accepted"):
        assert f"{fd} filetypes: ok fdstat=6 filestat=6" in lines  # SOCKET_STREAM
        assert f"{fd} fstat: ok socket=1 dir=0" in lines
        assert f"{fd} getsockopt SO_TYPE: ok stream=1" in lines
    assert lines[3] == "listening" and "accept: ok" in lines


@pytest.mark.vm
@pytest.mark.skipif(not KVM_USABLE, reason=KVM_REASON)
def test_a_kvm_keep_answers_as_the_nil_keep(tmp_path: Path) -> None:
    for name in ("wasi_rights", "wasi_paths"):
        data = tmp_path / name
        data.mkdir()
        expected = (EXPECTED / f"{name}.txt").read_text()
        assert output_of(keep_command(name, "/data", data=data, backend="kvm")) == expected
    for section in ("stdio", "env"):
        assert output_of(keep_command("wasi_stdio", section, backend="kvm")) == output_of(
            reference_command("wasi_stdio", section))
