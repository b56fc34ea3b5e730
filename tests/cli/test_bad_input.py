"""Bad input gets one clear line and a non-zero exit, never a traceback.

Input the keep rejects (a module wasmtime cannot load, one without ``_start``) runs on each backend
(the ``backend`` fixture). Input motte rejects before it starts a keep is tried with ``--backend
nil`` and ``--backend kvm`` wherever QEMU is installed or not: for kvm, QEMU is kept off ``PATH``,
so had motte launched a keep first, the error would say that QEMU is missing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import motte

Run = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture(params=["nil", "kvm"])
def before_launch(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """``motte run --backend B ARGS``, for input that must fail before any keep is launched."""
    backend = str(request.param)
    no_qemu = tmp_path / "no-qemu-here"
    no_qemu.mkdir()
    env = {"PATH": str(no_qemu)} if backend == "kvm" else None

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return motte("run", "--backend", backend, *args, env=env)

    return run


def one_line_error(result: object, *needles: str, status: int = 125) -> str:
    err = result.stderr.decode()  # type: ignore[attr-defined]
    assert result.returncode == status, err  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_file(before_launch: Run, tmp_path: Path) -> None:
    one_line_error(before_launch(str(tmp_path / "nope.wasm")), "no such file")


def test_not_wasm(before_launch: Run, tmp_path: Path) -> None:
    path = tmp_path / "script.wasm"
    path.write_text("#!/bin/sh\necho hi\n")
    one_line_error(before_launch(str(path)), "not a WebAssembly module")


def test_truncated_wasm(backend: str, tmp_path: Path, wasm) -> None:
    path = tmp_path / "cut.wasm"
    path.write_bytes(Path(wasm("hello")).read_bytes()[:300])
    one_line_error(motte("run", "--backend", backend, str(path)), "not a valid WebAssembly module")


def test_module_without_start(backend: str, wasm) -> None:
    one_line_error(motte("run", "--backend", backend, wasm("nostart")), "no _start")


def test_directory_without_main_py(before_launch: Run, tmp_path: Path) -> None:
    # A folder runs as a Python program (main.py); one without it is a clear error.
    one_line_error(before_launch(str(tmp_path)), "has no main.py")


def test_missing_config(before_launch: Run, tmp_path: Path, wasm) -> None:
    one_line_error(before_launch("--wasmcfgfile", str(tmp_path / "Enarx.toml"), wasm("hello")), "no such file")


def test_bad_dir_option(before_launch: Run, tmp_path: Path, wasm) -> None:
    one_line_error(before_launch("--dir", f"{tmp_path}/absent::/d", wasm("hello")), "is not a directory")


def test_bad_size_is_a_usage_error(before_launch: Run, wasm) -> None:
    # 125 as every failure of motte's own: 2 is a status a workload may well exit with.
    one_line_error(before_launch("--max-memory", "lots", wasm("hello")), "not a size", "see 'motte run --help'")


@pytest.mark.parametrize("args", [("run",), ("run", "--no-such-flag", "x.wasm"), ("no-such-command",),
                                  ("attest", "verify"), ("steward", "log", "--limit", "0")])
def test_every_usage_error_is_one_line_and_125(args: tuple[str, ...]) -> None:
    one_line_error(motte(*args), "motte: error: ", "--help')")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e10", "-1", "0", "0.0001", "soon"])
def test_a_timeout_must_be_a_finite_number_of_seconds(before_launch: Run, wasm, value: str) -> None:
    result = before_launch("--timeout", value, wasm("hello"))
    one_line_error(result, f"--timeout': {value!r} is not a number of seconds")


def test_the_longest_timeout_runs(wasm) -> None:
    result = motte("run", "--backend", "nil", "--timeout", "31536000", wasm("hello"))
    assert result.returncode == 0 and b"hello" in result.stdout.lower(), result.stderr


def test_an_argument_list_too_large_to_launch_is_refused_before_launch(before_launch: Run, wasm) -> None:
    args = ["x" * 1000] * 1100  # 1.1 MB: within what Linux passes to motte, beyond one launch message
    one_line_error(before_launch(wasm("hello"), "--", *args), "arguments, environment and CA bundles take",
                   "more than the 1048576 a keep's launch may carry")


def test_an_argument_list_that_fits_runs(wasm) -> None:
    result = motte("run", "--backend", "nil", wasm("hello"), "--", *(["x" * 1000] * 1000))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("nesting", ["a = " + "[" * 3000, "a = " + "{b = " * 3000, "[env]\nX = " + "[" * 3000])
def test_deeply_nested_toml_is_one_line(before_launch: Run, tmp_path: Path, wasm, nesting: str) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(nesting)
    one_line_error(before_launch("--wasmcfgfile", str(config), wasm("hello")), "nested too deeply")


def test_two_files_of_one_name_are_refused(before_launch: Run, tmp_path: Path, wasm) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text('[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\nname = "stdin"\n')
    err = one_line_error(before_launch("--wasmcfgfile", str(config), wasm("hello")), "Enarx.toml:5: files[1].name")
    assert "is already the name of files[0]" in err


def _special_file(kind: str, tmp_path: Path) -> str:
    if kind == "fifo":
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)  # with no writer: a plain open would wait for one for ever
        return str(fifo)
    return {"zero": "/dev/zero", "directory": str(tmp_path), "procfs": "/proc/self/status"}[kind]


_KIND_SHOWN = {"zero": "is a character device, not a regular file", "fifo": "is a FIFO, not a regular file",
               "directory": "is a directory, not a regular file", "procfs": "not a file on disk"}


@pytest.mark.parametrize("kind", ["zero", "fifo", "directory", "procfs"])
@pytest.mark.parametrize("entry", ["wasm", "wasmcfgfile", "ca", "steward_ca"])
def test_files_a_user_names_must_be_regular_files(before_launch: Run, tmp_path: Path, wasm, entry: str,
                                                  kind: str) -> None:
    special = _special_file(kind, tmp_path)
    config = tmp_path / "Enarx.toml"
    if entry == "ca":
        config.write_text(STDIO + f'[[files]]\nkind = "connect"\nprot = "tls"\nhost = "localhost"\nca = "{special}"\n')
    elif entry == "steward_ca":
        config.write_text(f'steward = "https://127.0.0.1:9"\nsteward_ca = "{special}"\n' + STDIO)
    args = {"wasm": [special], "wasmcfgfile": ["--wasmcfgfile", special, wasm("hello")],
            "ca": ["--wasmcfgfile", str(config), wasm("hello")],
            "steward_ca": ["--wasmcfgfile", str(config), wasm("hello")]}[entry]
    started = time.monotonic()
    shown = _KIND_SHOWN[kind]
    if (entry, kind) == ("wasm", "directory"):
        shown = "a folder runs as a Python program, and it has no main.py"  # a folder is a program
    err = one_line_error(before_launch(*args), f"{special}: {shown}")
    assert time.monotonic() - started < 30, err


STDIO = '[[files]]\nkind = "stdin"\n[[files]]\nkind = "stdout"\n[[files]]\nkind = "stderr"\n'


@pytest.mark.parametrize(
    ("toml", "line", "needle"),
    [
        ('[[files]]\nkind = "socket"\n', 2, 'files[0].kind'),
        ('[[files]]\nkind = "listen"\nprot = "udp"\nname = "x"\n', 3, "files[0].prot"),
        ('[[files]]\nkind = "stdout"\nname = "a:b"\n', 3, "files[0].name"),
        ('[[files]]\nkind = "listen"\nprot = "tls"\n', 1, "name"),
        ('[[files]]\nkind = "connect"\nprot = "tls"\n', 1, "host"),
        ('args = "--flag"\n', 1, "args"),
        ('[env]\nN = 3\n', 2, "env.N"),
        ('[[files]]\nkind = "listen"\nprot = "tcp"\nname = "x"\nport = "80"\n', 5, "port"),
        ('[[files]]\nkind = "stdin"\ncolour = "blue"\n', 3, "colour"),
        ('args = [\n', 1, "invalid TOML"),
    ],
)
def test_invalid_enarx_toml_names_file_line_and_key(before_launch: Run, tmp_path: Path, wasm, toml: str, line: int,
                                                    needle: str) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(toml)
    err = one_line_error(before_launch("--wasmcfgfile", str(config), wasm("hello")), needle)
    assert f"Enarx.toml:{line}" in err


def test_kvm_without_qemu_is_the_error_of_a_good_input(tmp_path: Path, wasm) -> None:
    """The control for ``before_launch``: with QEMU off PATH a kvm keep cannot start, and says so."""
    no_qemu = tmp_path / "no-qemu-here"
    no_qemu.mkdir()
    result = motte("run", "--backend", "kvm", wasm("hello"), env={"PATH": str(no_qemu)})
    one_line_error(result, "qemu-system-x86_64 is not installed")
    assert result.stdout == b""


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = motte("--debug", "run", "--backend", "nil", str(tmp_path / "nope.wasm"))
    assert result.returncode != 0
    assert b"Traceback" in result.stderr


def test_help_explains_the_options() -> None:
    result = motte("run", "--help")
    assert result.returncode == 0
    text = result.stdout.decode()
    for option in ("--backend", "--wasmcfgfile", "--env", "--dir", "--max-memory", "--timeout", "124", "137"):
        assert option in text
    assert motte("--help").returncode == 0
