"""Which signed tags a tenant accepts: the publishers it trusts, and whether an unsigned tag will do.

In a tenant policy file (``motte deploy --policy``) these are two top-level keys::

    publishers = ["<key thumbprint>", ...]   # what `motte package keygen` prints
    allow_unsigned = false                    # accept tags no trusted publisher signed?

Strict by default: no publishers (so nothing is accepted) and no unsigned tags.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from motte.shared.errors import MotteError

KEYS = ("publishers", "allow_unsigned")
_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256, unpadded


class RegistryPolicyError(MotteError):
    """A publishers / allow_unsigned value is wrong; the message names the key."""


@dataclass(frozen=True)
class RegistryPolicy:
    publishers: frozenset[str] = frozenset()
    allow_unsigned: bool = False

    @classmethod
    def from_table(cls, table: Mapping[str, Any], source: str = "policy") -> RegistryPolicy:
        """From a policy's top-level table; keys other than :data:`KEYS` are left to the caller."""
        publishers = table.get("publishers", [])
        if not isinstance(publishers, list) or not all(isinstance(p, str) for p in publishers):
            raise RegistryPolicyError(f"{source}: publishers: expected a list of key thumbprints")
        for publisher in publishers:
            check_publisher(publisher, source)
        allow = table.get("allow_unsigned", False)
        if not isinstance(allow, bool):
            raise RegistryPolicyError(f"{source}: allow_unsigned: expected true or false")
        return cls(frozenset(publishers), allow)


def check_publisher(publisher: str, source: str = "policy") -> str:
    if not _THUMBPRINT.fullmatch(publisher):
        raise RegistryPolicyError(f"{source}: publishers: {publisher[:60]!r} is not a key thumbprint "
                                  "(43 base64url characters, as motte package keygen prints)")
    return publisher
