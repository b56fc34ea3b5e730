"""SNP sealing of compiled modules: the format, the key request's encoding, and that nothing the
host changed is ever loaded."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import wasmtime

from motte.keep import sealing
from motte.keep.engine import ModuleCache, make_engine
from motte.keep.evidence import snp
from motte.keep.memory_limit import MemoryLimit
from motte.shared.errors import MotteError

KEY = bytes(range(32))
CACHE_KEY = "ab" * 32
#: Outlives every engine these tests make (see tests/keep/test_module_cache.py).
MEMORY = MemoryLimit(1 << 30)


# ---- the SNP_GET_DERIVED_KEY encoding (SEV-SNP firmware ABI, MSG_KEY_REQ / MSG_KEY_RSP) ----------


def test_the_ioctl_number_is_iowr_s_1_of_the_32_byte_guest_request() -> None:
    assert snp.SNP_GET_DERIVED_KEY == 0xC0205301


def test_key_request_layout() -> None:
    raw = snp.pack_derived_key_req(snp.FIELD_MEASUREMENT | snp.FIELD_GUEST_POLICY, vmpl=1, guest_svn=7,
                                   tcb_version=0x0102030405060708)
    assert len(raw) == 32  # struct snp_derived_key_req
    assert raw[0x00:0x04] == b"\0\0\0\0"  # ROOT_KEY_SELECT: 0 is the VCEK
    assert raw[0x04:0x08] == b"\0\0\0\0"  # reserved
    assert raw[0x08:0x10] == (0b1001).to_bytes(8, "little")  # GUEST_FIELD_SELECT: measurement (3), policy (0)
    assert raw[0x10:0x14] == (1).to_bytes(4, "little")  # VMPL
    assert raw[0x14:0x18] == (7).to_bytes(4, "little")  # GUEST_SVN
    assert raw[0x18:0x20] == bytes.fromhex("0807060504030201")  # TCB_VERSION
    fields = [snp.FIELD_GUEST_POLICY, snp.FIELD_IMAGE_ID, snp.FIELD_FAMILY_ID, snp.FIELD_MEASUREMENT,
              snp.FIELD_GUEST_SVN, snp.FIELD_TCB_VERSION]
    assert fields == [1 << bit for bit in range(6)]
    with pytest.raises(ValueError):
        snp.pack_derived_key_req(1 << 6)
    with pytest.raises(MotteError):
        snp.pack_derived_key_req(0, vmpl=4)


def test_key_response_layout() -> None:
    response = struct.pack("<I", 0) + bytes(28) + KEY  # STATUS, reserved to 0x1F, DERIVED_KEY 0x20-0x3F
    assert snp.parse_derived_key_response(response) == KEY
    with pytest.raises(MotteError, match="status 0x16"):
        snp.parse_derived_key_response(struct.pack("<I", 0x16) + bytes(60))
    with pytest.raises(MotteError, match="truncated"):
        snp.parse_derived_key_response(bytes(63))


@dataclass
class FakeKeyDevice:
    """Plays the sev-guest driver for SNP_GET_DERIVED_KEY: reads the request and writes the
    response through the pointers in the ioctl struct, as the kernel does. The key depends on
    the request and on this guest's measurement, as the firmware's does."""

    measurement: bytes = b"\xab" * 48
    fw_error: int = 0
    requests: list[bytes] = field(default_factory=list)

    def __call__(self, fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        assert mutate and request == snp.SNP_GET_DERIVED_KEY and len(arg) == snp.GUEST_REQUEST_IOCTL.size
        io = snp.unpack_guest_request(bytes(arg))
        assert io.msg_version == 1
        if self.fw_error:
            arg[:] = snp.GUEST_REQUEST_IOCTL.pack(1, io.req_data, io.resp_data, self.fw_error, 0)
            raise OSError(errno.EIO, "fake sev-guest error")
        raw = ctypes.string_at(io.req_data, snp.DERIVED_KEY_REQ.size)
        self.requests.append(raw)
        key = hashlib.sha256(b"vcek" + raw + self.measurement).digest()
        response = snp.MSG_KEY_RSP.pack(0, key)
        ctypes.memmove(io.resp_data, response, len(response))
        return 0


def _device(tmp_path: Path, fake: FakeKeyDevice) -> snp.SevGuestDevice:
    path = tmp_path / "sev-guest"
    path.write_bytes(b"")
    return snp.SevGuestDevice(path, ioctl=fake)


def test_the_sealing_key_is_derived_from_the_measurement_and_policy(tmp_path: Path) -> None:
    fake = FakeKeyDevice()
    key = sealing.snp_sealing_key(_device(tmp_path, fake))
    assert key is not None and len(key) == 32
    assert fake.requests == [snp.pack_derived_key_req(snp.FIELD_MEASUREMENT | snp.FIELD_GUEST_POLICY)]
    assert sealing.snp_sealing_key(_device(tmp_path, FakeKeyDevice())) == key, "the same keep derives it again"
    other = sealing.snp_sealing_key(_device(tmp_path, FakeKeyDevice(measurement=b"\xcd" * 48)))
    assert other is not None and other != key, "another keep image gets another key"


def test_no_sealing_key_without_the_device_or_when_the_firmware_refuses(tmp_path: Path) -> None:
    assert sealing.snp_sealing_key(snp.SevGuestDevice(tmp_path / "absent")) is None
    assert sealing.snp_sealing_key(_device(tmp_path, FakeKeyDevice(fw_error=0x16))) is None


# ---- the sealed format ---------------------------------------------------------------------------


def test_sealed_layout_and_round_trip() -> None:
    sealed = sealing.seal(KEY, CACHE_KEY, b"machine code")
    assert sealed[:8] == b"MOTTESM1" and len(sealed) == 8 + 12 + len(b"machine code") + 16
    assert b"machine code" not in sealed
    assert sealing.unseal(KEY, CACHE_KEY, sealed) == b"machine code"
    assert sealing.seal(KEY, CACHE_KEY, b"machine code") != sealed, "a fresh nonce each time"


def test_nothing_but_what_this_key_sealed_for_this_cache_key_opens() -> None:
    sealed = sealing.seal(KEY, CACHE_KEY, b"machine code")
    flipped = bytearray(sealed)
    flipped[30] ^= 1
    assert sealing.unseal(KEY, CACHE_KEY, bytes(flipped)) is None  # tampered
    assert sealing.unseal(KEY, CACHE_KEY, sealed[:-1]) is None  # truncated
    assert sealing.unseal(KEY, "cd" * 32, sealed) is None  # sealed for another module
    assert sealing.unseal(bytes(32), CACHE_KEY, sealed) is None  # another keep's key
    assert sealing.unseal(KEY, CACHE_KEY, b"MOTTESM2" + sealed[8:]) is None  # another format
    assert sealing.unseal(KEY, CACHE_KEY, b"plain compiled module, as a kvm keep stores it") is None


class DictStore:
    """The host's store, which the host may change at will."""

    def __init__(self) -> None:
        self.entries: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.entries.get(key)

    def put(self, key: str, artefact: bytes | bytearray) -> None:
        self.entries[key] = bytes(artefact)

    def close(self) -> None:
        pass


def test_an_snp_keep_never_loads_an_artefact_the_host_changed(wasm: object) -> None:
    engine = make_engine(False, MEMORY)
    module = Path(wasm("hello")).read_bytes()  # type: ignore[operator]
    digest = hashlib.sha256(module).hexdigest()
    host = DictStore()
    cache = ModuleCache(sealing.SealedStore(host, KEY))
    assert not cache.load(engine, module, digest).from_cache
    (key, stored), = host.entries.items()
    assert stored.startswith(b"MOTTESM1") and wasmtime.Module(engine, module).serialize() not in stored
    assert cache.load(engine, module, digest).from_cache

    # The host swaps in a valid compiled module of its own: plain, it is not even looked at.
    host.entries[key] = bytes(wasmtime.Module(engine, "(module)").serialize())
    assert not cache.load(engine, module, digest).from_cache
    # Nor is one sealed by another keep (another key), or one this keep sealed for another module.
    other = wasmtime.Module(engine, "(module)").serialize()
    for forged in (sealing.seal(bytes(32), key, other), sealing.seal(KEY, "cd" * 32, other)):
        host.entries[key] = forged
        assert not cache.load(engine, module, digest).from_cache
        assert host.entries[key] != forged and cache.load(engine, module, digest).from_cache  # resealed
