"""Runs inside the keep, in the workload's CPython (``site`` imports it at start-up): never on the host.

It makes a socket a program is given by number, an Enarx.toml's listen or connect file, work
as it does natively: ``socket.socket(fileno=3)``. CPython learns a socket's family from
``getsockname``, which WASI preview1 does not have, so without a family the socket's stays unknown
and ``accept`` fails ("getsockaddrlen: bad family"). When the program imports ``socket``, a socket
made from a file descriptor without a family gets ``AF_INET``: the family only sizes the address
buffers, and WASI reports no peer address anyway. A program that gives the family is unchanged.

Nothing is imported here but ``sys``, and nothing runs until the program imports ``socket``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # (typing is not imported at run time: start-up counts)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any


class _PatchingLoader:
    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        socket_class = module.socket
        make = socket_class.__init__
        inet = module.AF_INET

        def __init__(self: Any, family: int = -1, type: int = -1, proto: int = -1,
                     fileno: int | None = None) -> None:
            if fileno is not None and family == -1:
                family = inet
            make(self, family, type, proto, fileno)

        socket_class.__init__ = __init__


class _SocketFinder:
    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != "socket":
            return None
        sys.meta_path.remove(_SocketFinder)  # (once: and the finders below find the real module)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find(name, path, target) if find is not None else None
            if spec is not None:
                spec.loader = _PatchingLoader(spec.loader)  # type: ignore[assignment]
                return spec
        return None


sys.meta_path.insert(0, _SocketFinder)
