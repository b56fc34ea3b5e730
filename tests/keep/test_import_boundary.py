"""The keep (the TCB) imports nothing from the host, tenant or CLI side."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "motte"
FORBIDDEN = ("motte.host", "motte.tenant", "motte.cli")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_keep_and_shared_sources_import_no_host_side_code() -> None:
    offenders = []
    for folder in ("keep", "shared"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for name in _imports(path):
                if name.startswith(FORBIDDEN):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert offenders == []


def test_loading_the_keep_runtime_loads_no_host_side_module() -> None:
    probe = (
        "import sys, motte.keep.runtime, motte.keep.__main__;"
        "print([m for m in sys.modules if m.startswith(('motte.host', 'motte.tenant', 'motte.cli'))])"
    )
    out = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_boundary_check_would_catch_an_offender(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from motte.host.session import run_workload\nimport motte.cli.app\n")
    assert _imports(bad) == ["motte.host.session", "motte.cli.app"]
