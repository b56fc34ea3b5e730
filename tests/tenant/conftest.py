"""Shared fixtures for the tenant-side tests: where the real attestation vectors live."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

# The vectors sit beside the repository: <repo>/../shared/vectors (as /work/shared beside /work/main).
VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def at(text: str) -> datetime:
    """An ISO 8601 instant ("Z" allowed) as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@pytest.fixture(scope="session")
def vectors() -> Path:
    if not VECTORS.is_dir():
        pytest.skip(f"attestation vectors not found at {VECTORS} (expected ../shared/vectors beside the repo)")
    return VECTORS
