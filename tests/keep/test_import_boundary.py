"""The folders say where code runs, and imports keep to it.

- The keep (``keep/``, the TCB) imports nothing from the host, tenant or CLI side.
- ``shared/`` (code both sides run, all of it in the keep image) imports nothing from motte outside
  itself.
- ``outside/`` (code the programs outside the keep share, none of it in the keep image) is host
  side: the keep and ``shared/`` never import it. So the keep reads no file a user names
  (``outside/user_files.py``) and runs no service code. It imports only ``shared/`` and itself.
- The tenant side, the Steward and the registry import nothing from the host (or the CLI): what
  they share with it is in ``outside/``.
- The host imports from the keep only where it starts or holds a keep's own code: the modules in
  :data:`HOST_MODULES_THAT_START_A_KEEP`, each with its reason. The CLI, the tenant side, the
  Steward and the registry import nothing from the keep.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "motte"
HOST_SIDE = ("motte.host", "motte.tenant", "motte.cli", "motte.registry", "motte.steward", "motte.outside")
KEEP = "motte.keep"

#: The host modules that may import ``motte.keep``, and why. Any other host module that does fails
#: the test: host code that needs what the keep also runs takes it from ``motte.shared``.
HOST_MODULES_THAT_START_A_KEEP = {
    "host/nil_process.py": "starts a nil keep: its child process runs motte.keep.__main__.serve",
    "host/image/guest/selftest.py": "runs inside the keep image (the guest's self test), on the keep's virtio port",
}


def _module_name(path: Path, root: Path) -> str:
    parts = ["motte", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """Every module ``path`` imports, anywhere in it (inside functions too), relative imports
    resolved, and ``importlib.import_module("...")`` / ``__import__("...")`` of a literal name."""
    module = _module_name(path, root) if path.is_relative_to(root) else path.stem
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def _is_in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _offenders(folders: tuple[str, ...], forbidden: tuple[str, ...], allowed: dict[str, str] | None = None,
               root: Path = PACKAGE) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if allowed and rel in allowed:
                continue
            for name in _imports(path, root):
                if any(_is_in(name, f) for f in forbidden):
                    found.append(f"{rel} imports {name}")
    return found


def test_keep_and_shared_sources_import_no_host_side_code() -> None:
    assert _offenders(("keep", "shared"), HOST_SIDE) == []


def test_shared_imports_nothing_from_motte_outside_itself() -> None:
    assert _offenders(("shared",), ("motte.keep", *HOST_SIDE)) == []


def test_only_the_modules_that_start_a_keep_import_it() -> None:
    assert _offenders(("host",), (KEEP,), HOST_MODULES_THAT_START_A_KEEP) == []


def test_the_cli_tenant_steward_registry_and_outside_import_nothing_from_the_keep() -> None:
    assert _offenders(("cli", "tenant", "steward", "registry", "outside"), (KEEP,)) == []


def test_the_tenant_steward_and_registry_import_nothing_from_the_host() -> None:
    # They run on other machines than the untrusted host; what they share with it is in outside/.
    assert _offenders(("tenant", "steward", "registry"), ("motte.host", "motte.cli")) == []


def test_outside_imports_only_shared_and_itself() -> None:
    others = ("motte.keep", "motte.host", "motte.tenant", "motte.cli", "motte.steward", "motte.registry")
    assert _offenders(("outside",), others) == []


def test_each_allowed_keep_importer_exists_and_still_needs_its_exception() -> None:
    # A stale entry would let a new module of that name import the keep unnoticed.
    for rel in HOST_MODULES_THAT_START_A_KEEP:
        assert any(_is_in(name, KEEP) for name in _imports(PACKAGE / rel)), rel


def test_loading_the_keep_runtime_loads_no_host_side_module() -> None:
    probe = (
        "import sys, motte.keep.runtime, motte.keep.__main__;"
        f"print([m for m in sys.modules if m.startswith({HOST_SIDE!r})])"
    )
    out = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_boundary_check_would_catch_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from motte.host.session import run_workload\nimport motte.cli.app\n"
        "def later():\n    from motte.keep.wasi import files\n"
        "    import importlib\n    importlib.import_module('motte.keep.runtime')\n"
    )
    assert _imports(bad) == ["motte.host.session", "motte.cli.app", "motte.keep.wasi", "importlib",
                             "motte.keep.runtime"]


def test_a_host_module_importing_the_keep_is_caught(tmp_path: Path) -> None:
    fake = tmp_path / "motte"
    (fake / "host").mkdir(parents=True)
    (fake / "host" / "nil_process.py").write_text("from motte.keep.__main__ import serve\n")
    (fake / "host" / "hostfs.py").write_text("from ..keep.wasi import files\n")  # relative: still the keep
    (fake / "host" / "beneath.py").write_text("from motte.shared.wasi_abi import Errno\nimport motte.keeper\n")
    assert _offenders(("host",), (KEEP,), HOST_MODULES_THAT_START_A_KEEP, root=fake) == [
        "host/hostfs.py imports motte.keep.wasi"]
