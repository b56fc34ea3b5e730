"""The host's side of the module cache: serve a VM keep's compiled modules from the host's disk.

A VM keep opens a stream of kind :data:`motte.shared.module_cache.STREAM_KIND` when it is about
to compile; this serves it from ``<cache dir>/<backend>/`` (a
:class:`~motte.shared.module_store.DirectoryStore`), or refuses it when the run keeps no cache
(``motte run --no-cache``). What a kvm keep stores is its compiled module as it is (the host of a
kvm keep controls it anyway); an SNP keep stores it sealed, and a TDX keep stores nothing (see
:mod:`motte.keep.module_stores`). The keep is untrusted input here too: bounded messages, a few
artefacts per stream, one stream per run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from motte.shared import module_cache
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.module_store import DirectoryStore, ModuleStore

READ_SIZE = 1 << 20


class ModuleCacheServer:
    """Serves the module cache streams a keep opens on ``endpoint``."""

    def __init__(self, endpoint: Endpoint, cache_dir: str | None, backend: str):
        self.endpoint = endpoint
        self.store: ModuleStore | None = None if cache_dir is None else DirectoryStore(Path(cache_dir) / backend)
        self.threads: list[threading.Thread] = []

    def start(self) -> ModuleCacheServer:
        self.endpoint.route_opens(module_cache.STREAM_KIND, self._on_open)
        return self

    def _on_open(self, stream: int, meta: dict[str, Any]) -> str | None:
        # Called with the channel's lock held: the stream is served on a thread of its own.
        if self.store is None:
            return module_cache.NO_CACHE
        if self.threads:
            return "one module cache stream per run"
        thread = threading.Thread(target=serve_stream, args=(self.endpoint, stream, self.store),
                                  name="module-cache", daemon=True)
        self.threads.append(thread)
        thread.start()
        return None


def serve_stream(endpoint: Endpoint, stream: int, store: ModuleStore) -> None:
    """Answer the requests on ``stream`` until the keep's EOF; a broken request resets it."""
    reader = module_cache.reader()
    puts = 0
    try:
        while True:
            data = endpoint.read(stream, READ_SIZE)
            if not data:
                endpoint.eof(stream)
                return
            for body in reader.feed(data):
                request = module_cache.decode_request(body)
                if request.op == module_cache.Op.GET:
                    artefact = store.get(request.key)
                    if artefact is not None and len(artefact) > module_cache.MAX_ARTEFACT:
                        artefact = None
                    for part in module_cache.encode_answer(artefact):
                        endpoint.write(stream, part)
                else:
                    puts += 1
                    if puts > module_cache.MAX_PUTS:
                        raise module_cache.ModuleCacheProtocolError(f"more than {module_cache.MAX_PUTS} artefacts")
                    store.put(request.key, request.artefact)
    except MotteError as exc:
        try:
            endpoint.reset(stream, str(exc))
        except MotteError:
            pass
