"""Bad input gets one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import motte


def one_line_error(result: object, *needles: str, status: int = 125) -> str:
    err = result.stderr.decode()  # type: ignore[attr-defined]
    assert result.returncode == status, err  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_file(tmp_path: Path) -> None:
    one_line_error(motte("run", "--backend", "nil", str(tmp_path / "nope.wasm")), "no such file")


def test_not_wasm(tmp_path: Path) -> None:
    path = tmp_path / "script.wasm"
    path.write_text("#!/bin/sh\necho hi\n")
    one_line_error(motte("run", "--backend", "nil", str(path)), "not a WebAssembly module")


def test_truncated_wasm(tmp_path: Path, wasm) -> None:
    path = tmp_path / "cut.wasm"
    path.write_bytes(Path(wasm("hello")).read_bytes()[:300])
    one_line_error(motte("run", "--backend", "nil", str(path)), "not a valid WebAssembly module")


def test_module_without_start(wasm) -> None:
    one_line_error(motte("run", "--backend", "nil", wasm("nostart")), "no _start")


def test_directory_instead_of_a_module(tmp_path: Path) -> None:
    one_line_error(motte("run", "--backend", "nil", str(tmp_path)), "is a directory")


def test_missing_config(tmp_path: Path, wasm) -> None:
    one_line_error(motte("run", "--backend", "nil", "--wasmcfgfile", str(tmp_path / "Enarx.toml"), wasm("hello")),
                   "no such file")


def test_bad_dir_option(tmp_path: Path, wasm) -> None:
    one_line_error(motte("run", "--backend", "nil", "--dir", f"{tmp_path}/absent::/d", wasm("hello")),
                   "is not a directory")


def test_bad_size_is_a_usage_error(wasm) -> None:
    result = motte("run", "--backend", "nil", "--max-memory", "lots", wasm("hello"))
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
def test_invalid_enarx_toml_names_file_line_and_key(tmp_path: Path, wasm, toml: str, line: int, needle: str) -> None:
    config = tmp_path / "Enarx.toml"
    config.write_text(toml)
    err = one_line_error(motte("run", "--backend", "nil", "--wasmcfgfile", str(config), wasm("hello")), needle)
    assert f"Enarx.toml:{line}" in err


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
