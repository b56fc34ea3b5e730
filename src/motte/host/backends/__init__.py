"""Keep backends: how a keep is launched and where its channel comes from.

Above the channel every backend is the same; only launch, evidence and memory protection differ.
(This package's ``__init__`` imports nothing it does not need.)
"""

from __future__ import annotations

from motte.host.backends.base import Backend


def get_backend(name: str) -> Backend:
    from motte.shared.errors import MotteError

    if name == "nil":
        from motte.host.backends.nil import NilBackend

        return NilBackend()
    if name == "kvm":
        from motte.host.backends.kvm import KvmBackend

        return KvmBackend()
    raise MotteError(f"unknown backend {name!r}", hint="choose nil or kvm; see 'motte platform info'")
