"""Shared fixtures for the tenant-side tests: where the real attestation vectors live."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

# Real hardware evidence, in the repository (tests/vectors/README.md says what each set is).
VECTORS = Path(__file__).resolve().parents[1] / "vectors"


def at(text: str) -> datetime:
    """An ISO 8601 instant ("Z" allowed) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS
