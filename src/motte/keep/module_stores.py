"""Which compiled-module store a keep uses, and the host's store as a VM keep reaches it.

- nil: the host's cache directory itself (the keep is a process of the same user);
- kvm: the host's store over the channel (:mod:`motte.shared.module_cache`), artefacts as they
  are: the host of a kvm keep can read and change its memory anyway;
- snp: the same, sealed (:mod:`motte.keep.sealing`): the host cannot change what the keep loads;
- tdx: none: a TD has no sealing key, so it compiles every time.

A deployed workload uses none (its compiled code must not reach the host's disk): see
:meth:`motte.keep.runtime.KeepRuntime.serve_deployment`.
"""

from __future__ import annotations

import time

from motte.shared import module_cache
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.module_store import DirectoryStore, ModuleStore

ANSWER_TIMEOUT = 60.0  # seconds the host has to answer a GET (a large artefact under emulation)


def module_store(endpoint: Endpoint, backend: str, cache_dir: str | None) -> ModuleStore | None:
    """The store of a keep on ``backend``; ``cache_dir`` is the host's directory (nil keeps only)."""
    if backend == "nil":
        return None if cache_dir is None else DirectoryStore(cache_dir)
    if backend == "kvm":
        return ChannelStore(endpoint)
    if backend == "snp":
        from motte.keep.sealing import SealedStore, snp_sealing_key  # loads cryptography

        key = snp_sealing_key()
        return None if key is None else SealedStore(ChannelStore(endpoint), key)
    return None


class ChannelStore:
    """The host's store, over one channel stream opened on first use. A host that keeps no cache,
    answers wrongly or not at all leaves the keep without one for this run: it compiles."""

    def __init__(self, endpoint: Endpoint, timeout: float = ANSWER_TIMEOUT):
        self.endpoint = endpoint
        self.timeout = timeout
        self._stream: int | None = None
        self._failed = False

    def get(self, key: str) -> bytes | None:
        stream = self._open()
        if stream is None:
            return None
        try:
            self.endpoint.write(stream, module_cache.encode_get(key))
            return self._answer(stream)
        except MotteError:
            self._give_up()
            return None

    def put(self, key: str, artefact: bytes | bytearray) -> None:
        stream = self._open()
        if stream is None or len(artefact) > module_cache.MAX_ARTEFACT:
            return
        try:
            for part in module_cache.encode_put(key, artefact):
                self.endpoint.write(stream, part)
        except MotteError:
            self._give_up()

    def close(self) -> None:
        if self._stream is not None and not self._failed:
            try:
                self.endpoint.eof(self._stream)
            except MotteError:
                pass

    def _open(self) -> int | None:
        if self._failed:
            return None
        if self._stream is None:
            try:
                self._stream = self.endpoint.open_stream(module_cache.STREAM_KIND)
            except MotteError:
                self._failed = True
                return None
        return self._stream

    def _answer(self, stream: int) -> bytes | None:
        reader = module_cache.reader()
        deadline = time.monotonic() + self.timeout
        while True:
            data = self.endpoint.read(stream, 1 << 20, timeout=max(0.0, deadline - time.monotonic()))
            if not data:
                raise module_cache.ModuleCacheProtocolError("the host ended the module cache stream unanswered")
            bodies = reader.feed(data)
            if bodies:
                if len(bodies) > 1 or reader.pending:
                    raise module_cache.ModuleCacheProtocolError("the host sent more than one answer")
                return module_cache.decode_answer(bodies[0])

    def _give_up(self) -> None:
        self._failed = True
        if self._stream is not None:
            try:
                self.endpoint.reset(self._stream, "module cache abandoned")
            except MotteError:
                pass
