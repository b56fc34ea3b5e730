"""Fixtures of the channel tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.conftest import endpoint_pair

from motte.shared.endpoint import Endpoint


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    with endpoint_pair(window=1 << 16) as endpoints:
        yield endpoints
