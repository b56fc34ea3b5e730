"""Which compiled-module store a keep uses, and the host's store as a VM keep reaches it.

- nil: the host's cache directory itself (the keep is a process of the same user);
- kvm: the host's store over the channel (:mod:`motte.shared.module_cache`), artefacts as they
  are: the host of a kvm keep can read and change its memory anyway. An artefact arrives in an
  in-memory file that wasmtime maps (:class:`MappedArtefact`);
- snp: the same, sealed (:mod:`motte.keep.sealing`): the host cannot change what the keep loads;
- tdx: none: a TD has no sealing key, so it compiles every time.

A deployed workload uses none (its compiled code must not reach the host's disk): see
:meth:`motte.keep.runtime.KeepRuntime.serve_deployment`.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Protocol, runtime_checkable

from motte.shared import module_cache
from motte.shared.endpoint import Endpoint
from motte.shared.errors import MotteError
from motte.shared.module_store import DirectoryStore, ModuleStore

ANSWER_TIMEOUT = 60.0  # seconds the host has to answer a GET (a large artefact under emulation)
READ_SIZE = 1 << 20


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


class MappedArtefact:
    """An artefact in an anonymous in-memory file (memfd) that wasmtime maps (``Module.deserialize_file``
    on :attr:`path`) instead of copying it in. Under TCG emulation every copy of a compiled CPython
    (17 MB) into fresh memory costs about 45 ms: receiving it as bytes and loading those made four
    more."""

    def __init__(self, size: int):
        self.size = size
        self.fd = os.memfd_create("motte-artefact", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.view = mmap.mmap(self.fd, size) if size else None  # (an empty mapping is refused)
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def write(self, offset: int, data: bytes) -> None:
        assert self.view is not None
        self.view[offset : offset + len(data)] = data

    def read(self) -> bytes:
        return b"" if self.view is None else self.view[:]

    def close(self) -> None:
        """What wasmtime mapped stays mapped; only this view and descriptor go."""
        if self.view is not None:
            self.view.close()
        os.close(self.fd)

    def __enter__(self) -> MappedArtefact:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@runtime_checkable
class MappedStore(Protocol):
    """A store that hands out its artefacts as :class:`MappedArtefact` objects."""

    def get_mapped(self, key: str) -> MappedArtefact | None: ...


class ChannelStore:
    """The host's store, over one channel stream opened on first use. A host that keeps no cache,
    answers wrongly or not at all leaves the keep without one for this run: it compiles."""

    def __init__(self, endpoint: Endpoint, timeout: float = ANSWER_TIMEOUT):
        self.endpoint = endpoint
        self.timeout = timeout
        self._stream: int | None = None
        self._failed = False

    def get(self, key: str) -> bytes | None:
        mapped = self.get_mapped(key)
        if mapped is None:
            return None
        with mapped:
            return mapped.read()

    def get_mapped(self, key: str) -> MappedArtefact | None:
        """The artefact stored under ``key``, received straight into an in-memory file; the caller closes it."""
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

    def _answer(self, stream: int) -> MappedArtefact | None:
        deadline = time.monotonic() + self.timeout
        head = b""
        while len(head) < module_cache.ANSWER_HEAD_SIZE:
            head += self._read(stream, module_cache.ANSWER_HEAD_SIZE - len(head), deadline)
        size = module_cache.decode_answer_head(head)
        artefact = None if size is None else self._receive(stream, size, deadline)
        if self.endpoint.read_nowait(stream, 1):
            if artefact is not None:
                artefact.close()
            raise module_cache.ModuleCacheProtocolError("the host sent more than one answer")
        return artefact

    def _receive(self, stream: int, size: int, deadline: float) -> MappedArtefact:
        artefact = MappedArtefact(size)
        try:
            received = 0
            while received < size:
                data = self._read(stream, min(READ_SIZE, size - received), deadline)
                artefact.write(received, data)
                received += len(data)
        except BaseException:
            artefact.close()
            raise
        return artefact

    def _read(self, stream: int, size: int, deadline: float) -> bytes:
        data = self.endpoint.read(stream, size, timeout=max(0.0, deadline - time.monotonic()))
        if not data:
            raise module_cache.ModuleCacheProtocolError("the host ended the module cache stream unanswered")
        return data

    def _give_up(self) -> None:
        self._failed = True
        if self._stream is not None:
            try:
                self.endpoint.reset(self._stream, "module cache abandoned")
            except MotteError:
                pass
