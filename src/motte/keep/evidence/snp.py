"""SEV-SNP evidence from inside the guest: configfs-tsm first, ``/dev/sev-guest`` otherwise.

The ioctl path follows ``include/uapi/linux/sev-guest.h``::

    struct snp_report_req          { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }              96 bytes
    struct snp_ext_report_req      { struct snp_report_req data; u64 certs_address;
                                     u32 certs_len; /* 4 bytes padding */ }                 112 bytes
    struct snp_guest_request_ioctl { u8 msg_version; /* 7 padding */ u64 req_data;
                                     u64 resp_data; union { u64 exitinfo2;
                                     struct { u32 fw_error; u32 vmm_error; }; }; }            32 bytes
    struct snp_report_resp         { u8 data[4000]; }   /* MSG_REPORT_RSP: u32 status,
                                     u32 report_size, u8 rsvd[24], then the report */
    struct snp_derived_key_req     { u32 root_key_select; u32 rsvd; u64 guest_field_select;
                                     u32 vmpl; u32 guest_svn; u64 tcb_version; }            32 bytes
    struct snp_derived_key_resp    { u8 data[64]; }     /* MSG_KEY_RSP: u32 status,
                                     u8 rsvd[28], u8 derived_key[32] */
    SNP_GET_REPORT     = _IOWR('S', 0x0, struct snp_guest_request_ioctl)    = 0xc0205300
    SNP_GET_DERIVED_KEY = _IOWR('S', 0x1, struct snp_guest_request_ioctl)   = 0xc0205301
    SNP_GET_EXT_REPORT = _IOWR('S', 0x2, struct snp_guest_request_ioctl)    = 0xc0205302

The derived key request (MSG_KEY_REQ in the SEV-SNP firmware ABI) mixes the guest fields that
``guest_field_select`` names into a key derived from the chip's root key (the VCEK with
``root_key_select`` 0): bit 0 the guest policy, 1 the image ID, 2 the family ID, 3 the launch
measurement, 4 the guest SVN, 5 the TCB version.

The extended report also returns the host's certificate table (GHCB spec): 24-byte entries
``{ u8 guid[16]; u32 offset; u32 length; }`` ending with an all-zero entry, GUIDs in RFC 4122 byte
order (as ``uuid_parse`` writes them). If the table does not fit, the kernel fails with EIO,
``vmm_error`` = 1 (invalid length) and ``certs_len`` set to the size needed; we retry once with it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from motte.keep.evidence import Evidence, check_report_data
from motte.keep.evidence.encoding import SNP_REPORT_SIZE, encode_snp_evidence
from motte.keep.evidence.tsm import TSM_REPORT_ROOT, TsmFiles, tsm_available, tsm_report
from motte.shared.errors import MotteError

SEV_GUEST_DEVICE = Path("/dev/sev-guest")
PAGE_SIZE = 4096
REPORT_RESP_SIZE = 4000
MSG_VERSION = 1

REPORT_REQ = struct.Struct("<64sI28s")
EXT_REPORT_REQ = struct.Struct("<64sI28sQI4x")
GUEST_REQUEST_IOCTL = struct.Struct("<B7xQQII")  # msg_version, req_data, resp_data, fw_error, vmm_error
MSG_REPORT_RSP = struct.Struct("<II24x")  # status, report_size
DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")  # root_key_select, rsvd, guest_field_select, vmpl, guest_svn, tcb_version
MSG_KEY_RSP = struct.Struct("<I28x32s")  # status, derived_key
KEY_RESP_SIZE = 64

ROOT_KEY_VCEK = 0
FIELD_GUEST_POLICY = 1 << 0
FIELD_IMAGE_ID = 1 << 1
FIELD_FAMILY_ID = 1 << 2
FIELD_MEASUREMENT = 1 << 3
FIELD_GUEST_SVN = 1 << 4
FIELD_TCB_VERSION = 1 << 5

IOC_WRITE, IOC_READ = 1, 2
SNP_GUEST_REQ_IOC_TYPE = ord("S")

VMM_ERR_INVALID_LEN = 1
VMM_ERR_BUSY = 2
CERTS_SIZE = 0x4000  # SEV_FW_BLOB_MAX_SIZE: what older kernels accept at most
MAX_CERTS_SIZE = 1 << 20
BUSY_RETRIES = 5

# GHCB certificate-table GUIDs.
CERT_GUIDS = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "VLEK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ASK",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ARK",
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"): "CRL",
}
CERT_TABLE_ENTRY = struct.Struct("<16sII")


def iowr(ioc_type: int, nr: int, size: int) -> int:
    """Linux's ``_IOWR(type, nr, size)``: direction << 30 | size << 16 | type << 8 | nr."""
    return ((IOC_READ | IOC_WRITE) << 30) | (size << 16) | (ioc_type << 8) | nr


SNP_GET_REPORT = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x0, GUEST_REQUEST_IOCTL.size)
SNP_GET_DERIVED_KEY = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x1, GUEST_REQUEST_IOCTL.size)
SNP_GET_EXT_REPORT = iowr(SNP_GUEST_REQ_IOC_TYPE, 0x2, GUEST_REQUEST_IOCTL.size)


# --- struct encodings (pure) ---------------------------------------------------------------------
class GuestRequest(NamedTuple):
    msg_version: int
    req_data: int
    resp_data: int
    fw_error: int
    vmm_error: int

    @property
    def exitinfo2(self) -> int:
        return (self.vmm_error << 32) | self.fw_error


def pack_report_req(user_data: bytes, vmpl: int = 0) -> bytes:
    return REPORT_REQ.pack(check_report_data(user_data), _vmpl(vmpl), bytes(28))


def pack_ext_report_req(user_data: bytes, vmpl: int, certs_address: int, certs_len: int) -> bytes:
    if certs_len % PAGE_SIZE:
        raise ValueError("certs_len must be a multiple of the page size")
    return EXT_REPORT_REQ.pack(check_report_data(user_data), _vmpl(vmpl), bytes(28), certs_address, certs_len)


def unpack_ext_report_req(data: bytes) -> tuple[bytes, int, int, int]:
    user_data, vmpl, _, address, length = EXT_REPORT_REQ.unpack(data)
    return user_data, vmpl, address, length


def pack_guest_request(req_data: int, resp_data: int, msg_version: int = MSG_VERSION) -> bytes:
    return GUEST_REQUEST_IOCTL.pack(msg_version, req_data, resp_data, 0, 0)


def unpack_guest_request(data: bytes) -> GuestRequest:
    return GuestRequest(*GUEST_REQUEST_IOCTL.unpack(data))


def pack_derived_key_req(guest_field_select: int, *, vmpl: int = 0, guest_svn: int = 0, tcb_version: int = 0,
                         root_key_select: int = ROOT_KEY_VCEK) -> bytes:
    if guest_field_select >> 6:
        raise ValueError(f"guest_field_select {guest_field_select:#x} names fields beyond bit 5")
    return DERIVED_KEY_REQ.pack(root_key_select, 0, guest_field_select, _vmpl(vmpl), guest_svn, tcb_version)


def _response_fields(data: bytes, layout: struct.Struct, what: str) -> tuple[Any, ...]:
    """The fields after the status of a firmware response that says it succeeded."""
    if len(data) < layout.size:
        raise MotteError(f"SNP {what} response is truncated")
    status, *fields = layout.unpack_from(data)
    if status != 0:
        raise MotteError(f"the SNP firmware refused the {what} request (status {status:#x})")
    return tuple(fields)


def parse_derived_key_response(data: bytes) -> bytes:
    """The 32-byte key inside a ``MSG_KEY_RSP``."""
    (key,) = _response_fields(data, MSG_KEY_RSP, "key")
    return bytes(key)


def parse_report_response(data: bytes) -> bytes:
    """The attestation report inside a ``MSG_REPORT_RSP``."""
    (size,) = _response_fields(data, MSG_REPORT_RSP, "report")
    start = MSG_REPORT_RSP.size
    if size != SNP_REPORT_SIZE or start + size > len(data):
        raise MotteError(f"SNP report response: report_size {size}, expected {SNP_REPORT_SIZE}")
    return bytes(data[start : start + size])


def parse_cert_table(blob: bytes) -> dict[str, bytes]:
    """The host's certificate table as {"VCEK" | "VLEK" | "ASK" | "ARK" | "CRL" | guid: DER}."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + CERT_TABLE_ENTRY.size > len(blob):
            if not blob.strip(b"\0"):
                return out  # no table at all (the host supplied none)
            raise MotteError("SNP certificate table has no terminating entry")
        guid, offset, length = CERT_TABLE_ENTRY.unpack_from(blob, pos)
        if guid == bytes(16):
            return out
        if offset + length > len(blob) or offset < pos + CERT_TABLE_ENTRY.size or length == 0:
            raise MotteError(f"SNP certificate table entry {pos // CERT_TABLE_ENTRY.size} is out of bounds")
        out[_guid_name(guid)] = bytes(blob[offset : offset + length])
        pos += CERT_TABLE_ENTRY.size


def _guid_name(guid: bytes) -> str:
    big = uuid.UUID(bytes=guid)
    if big in CERT_GUIDS:
        return CERT_GUIDS[big]
    # Some hypervisor tools have written the little-endian (Microsoft) GUID layout. Accepting it
    # costs nothing: the Steward verifies whatever certificate ends up in the evidence.
    return CERT_GUIDS.get(uuid.UUID(bytes_le=guid), str(big))


def _vmpl(vmpl: int) -> int:
    if not 0 <= vmpl <= 3:
        raise MotteError(f"VMPL must be 0..3, got {vmpl}")
    return vmpl


# --- /dev/sev-guest ------------------------------------------------------------------------------
IoctlFn = Callable[[int, int, bytearray, bool], int]


def _default_ioctl(fd: int, request: int, arg: bytearray, mutate: bool) -> int:
    return int(fcntl.ioctl(fd, request, arg, mutate))


class SevGuestDevice:
    """``/dev/sev-guest``. ``ioctl`` is injectable so that tests can play the kernel."""

    def __init__(self, path: Path = SEV_GUEST_DEVICE, *, ioctl: IoctlFn = _default_ioctl) -> None:
        self.path = path
        self.ioctl = ioctl

    def available(self) -> bool:
        return self.path.exists()

    def extended_report(self, report_data: bytes, vmpl: int = 0) -> tuple[bytes, bytes]:
        """(report, certificate table) from SNP_GET_EXT_REPORT."""
        check_report_data(report_data)
        fd = self._open()
        try:
            certs_len = CERTS_SIZE
            for _ in range(2):
                certs = ctypes.create_string_buffer(certs_len)
                req = ctypes.create_string_buffer(
                    pack_ext_report_req(report_data, vmpl, ctypes.addressof(certs), certs_len), EXT_REPORT_REQ.size
                )
                resp = ctypes.create_string_buffer(REPORT_RESP_SIZE)
                result = self._request(fd, SNP_GET_EXT_REPORT, req, resp)
                if result is None:
                    return parse_report_response(resp.raw), certs.raw
                needed = unpack_ext_report_req(req.raw)[3]
                if needed <= certs_len or needed > MAX_CERTS_SIZE:
                    raise MotteError(f"SNP_GET_EXT_REPORT asks for a {needed}-byte certificate buffer")
                certs_len = -(-needed // PAGE_SIZE) * PAGE_SIZE
            raise MotteError("SNP_GET_EXT_REPORT: the certificate table kept growing")
        finally:
            os.close(fd)

    def report(self, report_data: bytes, vmpl: int = 0) -> bytes:
        """A report without certificates (SNP_GET_REPORT)."""
        raw = self._one_request(SNP_GET_REPORT, "SNP_GET_REPORT", pack_report_req(report_data, vmpl), REPORT_RESP_SIZE)
        return parse_report_response(raw)

    def derived_key(self, guest_field_select: int, vmpl: int = 0) -> bytes:
        """A key derived from the chip's VCEK and the guest fields selected (SNP_GET_DERIVED_KEY)."""
        request = pack_derived_key_req(guest_field_select, vmpl=vmpl)
        return parse_derived_key_response(self._one_request(SNP_GET_DERIVED_KEY, "SNP_GET_DERIVED_KEY", request,
                                                            KEY_RESP_SIZE))

    def _one_request(self, request: int, name: str, req_data: bytes, resp_size: int) -> bytes:
        """The raw response to one guest request that has no certificate buffer."""
        fd = self._open()
        try:
            req = ctypes.create_string_buffer(req_data, len(req_data))
            resp = ctypes.create_string_buffer(resp_size)
            if self._request(fd, request, req, resp) is not None:
                raise MotteError(f"{name}: unexpected invalid-length answer")
            return resp.raw
        finally:
            os.close(fd)

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise MotteError(
                f"{self.path} does not exist", hint="is this an SEV-SNP guest with sev-guest loaded?"
            ) from exc
        except OSError as exc:
            raise MotteError(
                f"cannot open {self.path}: {exc.strerror or exc}", hint="the keep runtime needs root"
            ) from exc

    def _request(
        self, fd: int, request: int, req: ctypes.Array[ctypes.c_char], resp: ctypes.Array[ctypes.c_char]
    ) -> GuestRequest | None:
        """Run one guest request; None on success, the ioctl struct when the certs buffer is short."""
        for attempt in range(BUSY_RETRIES):
            arg = bytearray(pack_guest_request(ctypes.addressof(req), ctypes.addressof(resp)))
            try:
                self.ioctl(fd, request, arg, True)
                return None
            except OSError as exc:
                out = unpack_guest_request(bytes(arg))
                if exc.errno == errno.EIO and out.vmm_error == VMM_ERR_INVALID_LEN and request == SNP_GET_EXT_REPORT:
                    return out
                if out.vmm_error == VMM_ERR_BUSY and attempt + 1 < BUSY_RETRIES:
                    time.sleep(0.01 * (attempt + 1))  # the host's PSP is busy with another guest
                    continue
                raise MotteError(
                    f"{self.path} request {request:#x} failed: {exc.strerror or exc} "
                    f"(firmware error {out.fw_error:#x}, VMM error {out.vmm_error:#x})"
                ) from exc
        raise MotteError(f"{self.path}: the host stayed busy")


# --- the source ----------------------------------------------------------------------------------
class SnpEvidenceSource:
    """SNP evidence: configfs-tsm when the kernel has it, else ``/dev/sev-guest``.

    ``vcek`` (DER or PEM): a VCEK/VLEK to use when the host's certificate table has none (the host
    may pass it over the channel; it is public, and the Steward checks it against AMD's roots).
    """

    technology = "snp"

    def __init__(
        self,
        *,
        tsm_root: Path = TSM_REPORT_ROOT,
        tsm_files: TsmFiles | None = None,
        device: SevGuestDevice | None = None,
        vmpl: int = 0,
        vcek: bytes | None = None,
        crls: Sequence[bytes] = (),
    ) -> None:
        self.tsm_root = tsm_root
        self.tsm_files = tsm_files
        self.device = device or SevGuestDevice()
        self.vmpl = _vmpl(vmpl)
        self.vcek = vcek
        self.crls = tuple(crls)

    def collect(self, report_data: bytes) -> Evidence:
        report, table = self.report(report_data)
        certs = parse_cert_table(table)
        vek = self.vcek or certs.get("VCEK") or certs.get("VLEK")
        if vek is None:
            raise MotteError(
                "the host supplied no VCEK or VLEK with the SNP report",
                hint="load the VCEK into the host's certificate table (snphost import) or pass it to the keep",
            )
        return Evidence("snp", encode_snp_evidence(vek, self.crls, report))

    def report(self, report_data: bytes) -> tuple[bytes, bytes]:
        """(report, certificate table) from whichever interface this guest has."""
        check_report_data(report_data)
        if tsm_available(self.tsm_root):
            got = tsm_report(
                report_data,
                provider="sev_guest",
                root=self.tsm_root,
                privlevel=self.vmpl or None,  # the default is the lowest allowed level
                want_aux=True,
                files=self.tsm_files,
            )
            if len(got.outblob) != SNP_REPORT_SIZE:
                raise MotteError(f"configfs-tsm SNP report is {len(got.outblob)} bytes, expected {SNP_REPORT_SIZE}")
            return got.outblob, got.auxblob
        if self.device.available():
            return self.device.extended_report(report_data, self.vmpl)
        raise MotteError(
            f"no SNP attestation interface: neither {self.tsm_root} nor {self.device.path} exists",
            hint="is this an SEV-SNP guest? (modprobe sev-guest; mount -t configfs none /sys/kernel/config)",
        )
