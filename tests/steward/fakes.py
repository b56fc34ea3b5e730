"""Test doubles for the TEE side: a fake SNP platform (test-only AMD keys), a fake configfs-tsm
kernel over a real temporary directory tree, and a fake ``/dev/sev-guest`` ioctl that reads and
writes the caller's memory through the pointers in the request, as the kernel does."""

from __future__ import annotations

import ctypes
import errno
import shutil
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from motte.keep.evidence import snp
from motte.keep.evidence.tsm import TsmFiles
from motte.tenant.attest.amd_roots import AmdTrust
from tests.tenant.attest_forge import build_report, der, fake_amd, tcb_bytes

MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
CHIP = bytes(range(64))
MEASUREMENT = bytes.fromhex("ab" * 48)
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
DEBUG_POLICY = 0x30000 | (1 << 19)


@dataclass
class FakeSnp:
    """A Milan platform under the test-only AMD hierarchy: its VCEK signs reports."""

    key: ec.EllipticCurvePrivateKey
    vcek: bytes

    @classmethod
    def make(cls) -> FakeSnp:
        key, cert = fake_amd("Milan").vek(tcb=MILAN_TCB, hwid=CHIP)
        return cls(key, der(cert))

    def trust(self) -> AmdTrust:
        return fake_amd("Milan").trust()

    def report(self, report_data: bytes, *, policy: int = 0x30000, measurement: bytes = MEASUREMENT) -> bytes:
        return build_report(
            self.key,
            reported_tcb=tcb_bytes("Milan", MILAN_TCB),
            chip_id=CHIP,
            report_data=report_data,
            policy=policy,
            measurement=measurement,
        )


def cert_table(entries: dict[uuid.UUID, bytes], *, little_endian: bool = False) -> bytes:
    """A GHCB certificate table: 24-byte entries, an all-zero terminator, then the blobs."""
    header = (len(entries) + 1) * 24
    table, blobs = b"", b""
    for guid, blob in entries.items():
        table += (guid.bytes_le if little_endian else guid.bytes) + struct.pack("<II", header + len(blobs), len(blob))
        blobs += blob
    return table + bytes(24) + blobs


@dataclass
class FakeTsmKernel(TsmFiles):
    """configfs-tsm over a plain directory: mkdir populates the attributes, writing inblob makes
    the outblob, rmdir removes the whole entry (as configfs does)."""

    provider: str
    make_outblob: Callable[[bytes], bytes]
    auxblob: bytes | None = None
    races: int = 0  # how many requests see a foreign write between inblob and outblob
    made: list[str] = field(default_factory=list)
    writes: list[tuple[str, bytes]] = field(default_factory=list)

    def mkdir(self, path: Path) -> None:
        path.mkdir()
        self.made.append(path.name)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")
        for name in ("inblob", "outblob", "privlevel"):
            (path / name).write_bytes(b"")
        if self.auxblob is not None:
            (path / "auxblob").write_bytes(b"")

    def rmdir(self, path: Path) -> None:
        shutil.rmtree(path)

    def write(self, path: Path, data: bytes) -> None:
        super().write(path, data)
        self.writes.append((path.name, data))
        generation = int((path.parent / "generation").read_text())
        if path.name == "inblob":
            (path.parent / "outblob").write_bytes(self.make_outblob(data))
            if self.auxblob is not None:
                (path.parent / "auxblob").write_bytes(self.auxblob)
            if self.races > 0:
                self.races -= 1
                generation += 1  # another process wrote this entry too
        (path.parent / "generation").write_text(f"{generation + 1}\n")


@dataclass
class FakeSevGuest:
    """Plays the sev-guest driver for SNP_GET_REPORT / SNP_GET_EXT_REPORT."""

    platform: FakeSnp
    certs: bytes = b""
    fw_error: int = 0
    busy: int = 0  # answer "busy" this many times first
    calls: list[int] = field(default_factory=list)
    vmpls: list[int] = field(default_factory=list)

    def __call__(self, fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        assert mutate and len(arg) == snp.GUEST_REQUEST_IOCTL.size
        self.calls.append(request)
        io = snp.unpack_guest_request(bytes(arg))
        assert io.msg_version == 1
        if self.busy:
            self.busy -= 1
            return self._fail(arg, io, 0, snp.VMM_ERR_BUSY, errno.EAGAIN)
        if self.fw_error:
            return self._fail(arg, io, self.fw_error, 0, errno.EIO)
        if request == snp.SNP_GET_EXT_REPORT:
            raw = ctypes.string_at(io.req_data, snp.EXT_REPORT_REQ.size)
            user_data, vmpl, address, length = snp.unpack_ext_report_req(raw)
            if length < len(self.certs):
                needed = -(-len(self.certs) // snp.PAGE_SIZE) * snp.PAGE_SIZE
                ctypes.memmove(io.req_data, snp.pack_ext_report_req(user_data, vmpl, address, needed), len(raw))
                return self._fail(arg, io, 0, snp.VMM_ERR_INVALID_LEN, errno.EIO)
            ctypes.memmove(address, self.certs, len(self.certs))
        elif request == snp.SNP_GET_REPORT:
            raw = ctypes.string_at(io.req_data, snp.REPORT_REQ.size)
            user_data, vmpl, _ = snp.REPORT_REQ.unpack(raw)
        else:
            raise OSError(errno.ENOTTY, "bad ioctl")
        self.vmpls.append(vmpl)
        report = self.platform.report(user_data)
        response = snp.MSG_REPORT_RSP.pack(0, len(report)) + report
        ctypes.memmove(io.resp_data, response, len(response))
        return 0

    @staticmethod
    def _fail(arg: bytearray, io: snp.GuestRequest, fw: int, vmm: int, code: int) -> int:
        arg[:] = snp.GUEST_REQUEST_IOCTL.pack(io.msg_version, io.req_data, io.resp_data, fw, vmm)
        raise OSError(code, "fake sev-guest error")


def tdx_quote(report_data: bytes, *, version: int = 4, tee: int = 0x81) -> bytes:
    """Just the parts of a TD quote the keep checks: the header and REPORTDATA."""
    header = struct.pack("<HHI", version, 2, tee) + bytes(40)
    body = bytes(520) + report_data + bytes(584 - 520 - 64)
    extra = struct.pack("<HI", 2, 584) if version == 5 else b""
    return header + extra + body + bytes(64)
