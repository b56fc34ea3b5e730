"""Bad input gets one clear line and a non-zero exit, never a traceback.

Input the keep rejects (a module wasmtime cannot load, one without ``_start``) runs on each backend
(the ``backend`` fixture). Input motte rejects before it starts a keep is tried with ``--backend
nil`` and ``--backend kvm`` wherever QEMU is installed or not: for kvm, QEMU is kept off ``PATH``,
so had motte launched a keep first, the error would say that QEMU is missing.
"""

from __future__ import annotations

import subprocess
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


def test_directory_instead_of_a_module(before_launch: Run, tmp_path: Path) -> None:
    one_line_error(before_launch(str(tmp_path)), "is a directory")


def test_missing_config(before_launch: Run, tmp_path: Path, wasm) -> None:
    one_line_error(before_launch("--wasmcfgfile", str(tmp_path / "Enarx.toml"), wasm("hello")), "no such file")


def test_bad_dir_option(before_launch: Run, tmp_path: Path, wasm) -> None:
    one_line_error(before_launch("--dir", f"{tmp_path}/absent::/d", wasm("hello")), "is not a directory")


def test_bad_size_is_a_usage_error(before_launch: Run, wasm) -> None:
    result = before_launch("--max-memory", "lots", wasm("hello"))
    assert result.returncode == 2
    assert b"not a size" in result.stderr and b"Traceback" not in result.stderr


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
