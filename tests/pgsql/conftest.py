"""Fixtures for the PostgreSQL tests: a server for the session (tests/pgsql/server.py), a fresh
database for each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.pgsql.server import PostgresDidNotStart, new_database, postgres_bin_dir, postgres_server


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry replicas' TLS identity (a test CA's), as tests/registry's fixture makes it."""
    from tests.steward.conftest import steward_tls_identity

    folder = tmp_path_factory.mktemp("pgsql-tls")
    steward_tls_identity(folder)
    return folder


@pytest.fixture(scope="session")
def postgres_socket_dir() -> Iterator[Path]:
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; dev/setup --system installs it)")
    try:
        with postgres_server() as sockets:
            yield sockets
    except PostgresDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture
def postgres_dsn(postgres_socket_dir: Path) -> Callable[[], str]:
    """Makes a new, empty database and returns its DSN."""

    return lambda: new_database(postgres_socket_dir)
