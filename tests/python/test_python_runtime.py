"""The pinned CPython build and how a Python program is laid out, without running a keep."""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import zipfile
from pathlib import Path

import pytest

from motte.host import python_runtime
from motte.host.python_runtime import (
    APP_GUEST,
    STDLIB_GUEST,
    PythonProgram,
    check_guest_paths,
    check_interpreter,
    interpreter,
    python_program,
    stdlib_dir,
)
from motte.shared.enarx_config import WorkloadConfig, default_config
from motte.shared.errors import MotteError


def test_the_installed_interpreter_is_the_pinned_plain_wasi_command() -> None:
    import wasmtime

    wasm = interpreter()
    check_interpreter(hashlib.sha256(wasm).hexdigest())
    module = wasmtime.Module(wasmtime.Engine(), wasm)
    assert {i.module for i in module.imports} == {"wasi_snapshot_preview1"}  # no custom host imports
    assert "_start" in [e.name for e in module.exports]  # a command, not a reactor


def test_a_different_interpreter_is_refused() -> None:
    with pytest.raises(MotteError, match="is not the pinned CPython build"):
        check_interpreter(hashlib.sha256(b"not python").hexdigest())


def test_the_stdlib_directory_is_made_once_and_remade_when_damaged(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTTE_CACHE_DIR", str(tmp_path))
    lib = stdlib_dir()
    assert lib.is_relative_to(tmp_path)
    zip_path = lib / "python311.zip"
    assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == python_runtime.STDLIB_ZIP_SHA256
    with zipfile.ZipFile(zip_path) as archive:  # the landmarks CPython looks for to find its prefix
        assert (lib / "python3.11" / "os.pyc").read_bytes() == archive.read("os.pyc")
    assert (lib / "python3.11" / "lib-dynload").is_dir()
    made = zip_path.stat().st_mtime_ns
    assert stdlib_dir() == lib and zip_path.stat().st_mtime_ns == made  # checked, not remade
    zip_path.write_bytes(b"damaged")
    assert stdlib_dir() == lib
    assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == python_runtime.STDLIB_ZIP_SHA256
    site = lib / "python3.11" / "sitecustomize.py"
    assert site.read_bytes() == python_runtime.SITECUSTOMIZE.read_bytes()
    site.write_text("import os; os.system('anything')\n")  # changed: motte's own is put back
    assert stdlib_dir() == lib and site.read_bytes() == python_runtime.SITECUSTOMIZE.read_bytes()
    assert [p.name for p in lib.parent.parent.iterdir()] == [lib.parent.name]  # no staging left behind


def test_motte_s_site_hook_is_served_compiled_for_the_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTTE_CACHE_DIR", str(tmp_path))
    lib = stdlib_dir()
    with zipfile.ZipFile(lib / "python311.zip") as archive:  # the pinned interpreter's bytecode
        assert archive.read("os.pyc")[:4] == python_runtime.GUEST_PYC_MAGIC
    pyc = lib / "python3.11" / python_runtime.SITECUSTOMIZE_PYC
    source = python_runtime.SITECUSTOMIZE.read_bytes()
    if importlib.util.MAGIC_NUMBER != python_runtime.GUEST_PYC_MAGIC:  # another CPython: the guest compiles it
        assert python_runtime.sitecustomize_pyc(source) is None and not pyc.exists()
        return
    data = pyc.read_bytes()
    assert data[4:8] == (0b11).to_bytes(4, "little")  # hash-based, checked: never stale against the source
    assert data[8:16] == importlib.util.source_hash(source)
    code = marshal.loads(data[16:])
    assert code.co_filename == "/usr/local/lib/python3.11/sitecustomize.py"
    pyc.write_bytes(data[:8] + bytes(8) + data[16:])  # compiled from another source: made anew
    assert stdlib_dir() == lib and pyc.read_bytes()[8:16] == importlib.util.source_hash(source)


def test_a_py_file_or_a_folder_with_main_py_is_a_program(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    (tmp_path / "module.wasm").write_bytes(b"\0asm")
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "main.py").write_text("")
    assert python_program(tmp_path / "app.py") == PythonProgram(tmp_path.resolve(), "app.py")
    assert python_program(folder) == PythonProgram(folder.resolve(), "main.py")
    assert python_program(tmp_path / "module.wasm") is None
    (tmp_path / "link.py").symlink_to(folder / "main.py")  # as python: the script's own folder
    assert python_program(tmp_path / "link.py") == PythonProgram(folder.resolve(), "main.py")


def test_what_is_not_a_program_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MotteError, match=r"has no main\.py"):
        python_program(tmp_path)
    with pytest.raises(MotteError, match="no such file"):
        python_program(tmp_path / "missing.py")


def test_the_script_comes_before_the_configs_and_the_command_lines_arguments(tmp_path: Path) -> None:
    config = WorkloadConfig(args=["--from-file"], env={"K": "V"}).with_extra(args=["--cli"])
    program = PythonProgram(tmp_path, "app.py")
    ran = program.config(config)
    assert ran.args == (f"{APP_GUEST}/app.py", "--from-file", "--cli")
    assert (ran.env, ran.files, ran.fd_env) == (config.env, config.files, config.fd_env)
    assert program.config(default_config()).args == (f"{APP_GUEST}/app.py",)


def test_a_dir_may_not_take_the_programs_places() -> None:
    check_guest_paths((("/srv/data", "/data"), ("/srv/app-data", "/app/data")))
    for guest in (APP_GUEST, f"{APP_GUEST}/", STDLIB_GUEST):
        with pytest.raises(MotteError, match="is served there"):
            check_guest_paths((("/srv/x", guest),))
