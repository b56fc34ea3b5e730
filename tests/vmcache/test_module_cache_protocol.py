"""The module cache protocol (byte layouts, bounds), and a VM keep's store against the host's server."""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from motte.host.module_cache import ModuleCacheServer
from motte.keep.engine import ModuleCache, make_engine
from motte.keep.module_stores import ChannelStore, module_store
from motte.shared import module_cache
from motte.shared.endpoint import StreamAborted
from motte.shared.hostfs import HostFsProtocolError
from motte.shared.module_store import DirectoryStore
from tests.conftest import endpoint_pair
from tests.vmcache.test_sealing import MEMORY

KEY = "ab" * 32
OTHER = "cd" * 32


def _joined(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def test_byte_layouts() -> None:
    assert module_cache.encode_get(KEY) == struct.pack(">IB", 33, 1) + bytes.fromhex(KEY)
    assert _joined(module_cache.encode_put(KEY, b"xyz")) == struct.pack(">IB", 36, 2) + bytes.fromhex(KEY) + b"xyz"
    assert _joined(module_cache.encode_answer(None)) == struct.pack(">IB", 1, 0)
    assert _joined(module_cache.encode_answer(b"code")) == struct.pack(">IB", 5, 1) + b"code"


def test_round_trips() -> None:
    reader = module_cache.reader()
    wire = module_cache.encode_get(KEY) + _joined(module_cache.encode_put(OTHER, b"\0" * 1000))
    bodies = [body for i in range(0, len(wire), 7) for body in reader.feed(wire[i : i + 7])]
    assert [module_cache.decode_request(b) for b in bodies] == [
        module_cache.Request(module_cache.Op.GET, KEY), module_cache.Request(module_cache.Op.PUT, OTHER, b"\0" * 1000)]
    head = module_cache.ANSWER_HEAD_SIZE
    assert module_cache.decode_answer_head(_joined(module_cache.encode_answer(b"code"))[:head]) == len(b"code")
    assert module_cache.decode_answer_head(_joined(module_cache.encode_answer(None))[:head]) is None


@pytest.mark.parametrize("body", [b"", b"\1" + bytes(31), b"\3" + bytes(32), b"\1" + bytes(33)])
def test_malformed_requests_are_refused(body: bytes) -> None:
    with pytest.raises(module_cache.ModuleCacheProtocolError):
        module_cache.decode_request(body)


@pytest.mark.parametrize("length, found", [(0, 0), (1, 2), (2, 0), (module_cache.MAX_ARTEFACT + 2, 1)])
def test_malformed_answers_are_refused(length: int, found: int) -> None:
    with pytest.raises(module_cache.ModuleCacheProtocolError):
        module_cache.decode_answer_head(struct.pack(">IB", length, found))


def test_bounds() -> None:
    with pytest.raises(ValueError):
        module_cache.encode_get("ab" * 31)
    with pytest.raises(ValueError):
        module_cache.encode_get("zz" * 32)
    too_big = memoryview(bytearray(module_cache.MAX_ARTEFACT + 1))
    with pytest.raises(ValueError):
        module_cache.encode_put(KEY, too_big)
    with pytest.raises(HostFsProtocolError):  # a length beyond the bound is refused before any byte is held
        module_cache.reader().feed(struct.pack(">I", module_cache.MAX_BODY + 1))


def test_a_keep_store_gets_what_it_put_through_the_host(tmp_path: Path) -> None:
    with endpoint_pair() as (host, keep):
        ModuleCacheServer(host, str(tmp_path), "kvm").start()
        store = ChannelStore(keep, timeout=5.0)
        assert store.get(KEY) is None
        store.put(KEY, b"compiled" * 1000)
        store.close()
        # A later run's store, on a stream of its own (one per run: a fresh server, as each run has).
        ModuleCacheServer(host, str(tmp_path), "kvm").start()
        again = ChannelStore(keep, timeout=5.0)
        assert _eventually(lambda: DirectoryStore(tmp_path / "kvm").get(KEY) is not None)
        assert again.get(KEY) == b"compiled" * 1000
        assert again.get(OTHER) is None
        mapped = again.get_mapped(KEY)  # in an in-memory file, which wasmtime maps
        assert mapped is not None
        with mapped, open(mapped.path, "rb") as file:
            assert file.read() == b"compiled" * 1000
        again.close()


def test_a_keep_loads_a_module_the_host_stored_from_an_in_memory_file(tmp_path: Path, wasm: object) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()  # type: ignore[operator]
    digest = hashlib.sha256(module).hexdigest()
    with endpoint_pair() as (host, keep):
        ModuleCacheServer(host, str(tmp_path), "kvm").start()
        assert not ModuleCache(ChannelStore(keep, timeout=5.0)).load(engine, module, digest).from_cache
        assert _eventually(lambda: len(list((tmp_path / "kvm").glob("*.cwasm"))) == 1)
        ModuleCacheServer(host, str(tmp_path), "kvm").start()
        loaded = ModuleCache(ChannelStore(keep, timeout=5.0)).load(engine, module, digest)
        assert loaded.from_cache and "_start" in [export.name for export in loaded.module.exports]


def test_a_host_without_a_cache_refuses_and_the_keep_compiles(tmp_path: Path) -> None:
    with endpoint_pair() as (host, keep):
        ModuleCacheServer(host, None, "kvm").start()
        store = ChannelStore(keep, timeout=5.0)
        assert store.get(KEY) is None
        store.put(KEY, b"compiled")  # nothing to send it to: dropped
        assert store.get(KEY) is None
        store.close()


def test_the_host_serves_one_stream_per_run_and_bounds_puts(tmp_path: Path) -> None:
    with endpoint_pair() as (host, keep):
        ModuleCacheServer(host, str(tmp_path), "kvm").start()
        first = ChannelStore(keep, timeout=5.0)
        assert first.get(KEY) is None
        second = ChannelStore(keep, timeout=5.0)
        assert second.get(KEY) is None and second._failed  # refused: the keep has one stream
        for i in range(module_cache.MAX_PUTS + 1):
            first.put(f"{i:064x}", b"x")
        assert first._stream is not None
        with pytest.raises(StreamAborted):  # the host reset the stream after the extra artefact
            keep.read(first._stream, 10, timeout=5.0)
        assert len(list((tmp_path / "kvm").glob("*.cwasm"))) == module_cache.MAX_PUTS


def test_which_store_each_backend_uses(tmp_path: Path) -> None:
    with endpoint_pair() as (_, keep):
        assert isinstance(module_store(keep, "nil", str(tmp_path)), DirectoryStore)
        assert module_store(keep, "nil", None) is None
        assert isinstance(module_store(keep, "kvm", None), ChannelStore)
        assert module_store(keep, "tdx", None) is None, "a TD has no sealing key: it compiles every time"


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False
