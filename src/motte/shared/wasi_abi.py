"""The WASI preview1 ABI both sides speak: constants and struct layouts (from the witx
definitions), the errno table, and the error a WASI call fails with.

The keep implements preview1 on it; the host's file server (:mod:`motte.host.hostfs`) answers the
keep's requests with the same errno values and the same file status fields.
"""

from __future__ import annotations

import errno as _os_errno
import struct
from enum import IntEnum, IntFlag


class Errno(IntEnum):
    SUCCESS = 0
    TOOBIG = 1
    ACCES = 2
    ADDRINUSE = 3
    ADDRNOTAVAIL = 4
    AFNOSUPPORT = 5
    AGAIN = 6
    ALREADY = 7
    BADF = 8
    BADMSG = 9
    BUSY = 10
    CANCELED = 11
    CHILD = 12
    CONNABORTED = 13
    CONNREFUSED = 14
    CONNRESET = 15
    DEADLK = 16
    DESTADDRREQ = 17
    DOM = 18
    DQUOT = 19
    EXIST = 20
    FAULT = 21
    FBIG = 22
    HOSTUNREACH = 23
    IDRM = 24
    ILSEQ = 25
    INPROGRESS = 26
    INTR = 27
    INVAL = 28
    IO = 29
    ISCONN = 30
    ISDIR = 31
    LOOP = 32
    MFILE = 33
    MLINK = 34
    MSGSIZE = 35
    MULTIHOP = 36
    NAMETOOLONG = 37
    NETDOWN = 38
    NETRESET = 39
    NETUNREACH = 40
    NFILE = 41
    NOBUFS = 42
    NODEV = 43
    NOENT = 44
    NOEXEC = 45
    NOLCK = 46
    NOLINK = 47
    NOMEM = 48
    NOMSG = 49
    NOPROTOOPT = 50
    NOSPC = 51
    NOSYS = 52
    NOTCONN = 53
    NOTDIR = 54
    NOTEMPTY = 55
    NOTRECOVERABLE = 56
    NOTSOCK = 57
    NOTSUP = 58
    NOTTY = 59
    NXIO = 60
    OVERFLOW = 61
    OWNERDEAD = 62
    PERM = 63
    PIPE = 64
    PROTO = 65
    PROTONOSUPPORT = 66
    PROTOTYPE = 67
    RANGE = 68
    ROFS = 69
    SPIPE = 70
    SRCH = 71
    STALE = 72
    TIMEDOUT = 73
    TXTBSY = 74
    XDEV = 75
    NOTCAPABLE = 76


def _os_to_wasi() -> dict[int, Errno]:
    table: dict[int, Errno] = {}
    for member in Errno:
        name = "E2BIG" if member is Errno.TOOBIG else f"E{member.name}"
        value = getattr(_os_errno, name, None)
        if value is not None and member is not Errno.SUCCESS:
            table.setdefault(value, member)
    table[_os_errno.EOPNOTSUPP] = Errno.NOTSUP
    # openat2(RESOLVE_BENEATH) reports an escape from the preopened directory as EXDEV.
    table[_os_errno.EXDEV] = Errno.NOTCAPABLE
    return table


OS_ERRNO_TO_WASI = _os_to_wasi()


def wasi_errno(exc: OSError) -> Errno:
    return OS_ERRNO_TO_WASI.get(exc.errno or 0, Errno.IO)


class Filetype(IntEnum):
    UNKNOWN = 0
    BLOCK_DEVICE = 1
    CHARACTER_DEVICE = 2
    DIRECTORY = 3
    REGULAR_FILE = 4
    SOCKET_DGRAM = 5
    SOCKET_STREAM = 6
    SYMBOLIC_LINK = 7


class Rights(IntFlag):
    FD_DATASYNC = 1 << 0
    FD_READ = 1 << 1
    FD_SEEK = 1 << 2
    FD_FDSTAT_SET_FLAGS = 1 << 3
    FD_SYNC = 1 << 4
    FD_TELL = 1 << 5
    FD_WRITE = 1 << 6
    FD_ADVISE = 1 << 7
    FD_ALLOCATE = 1 << 8
    PATH_CREATE_DIRECTORY = 1 << 9
    PATH_CREATE_FILE = 1 << 10
    PATH_LINK_SOURCE = 1 << 11
    PATH_LINK_TARGET = 1 << 12
    PATH_OPEN = 1 << 13
    FD_READDIR = 1 << 14
    PATH_READLINK = 1 << 15
    PATH_RENAME_SOURCE = 1 << 16
    PATH_RENAME_TARGET = 1 << 17
    PATH_FILESTAT_GET = 1 << 18
    PATH_FILESTAT_SET_SIZE = 1 << 19
    PATH_FILESTAT_SET_TIMES = 1 << 20
    FD_FILESTAT_GET = 1 << 21
    FD_FILESTAT_SET_SIZE = 1 << 22
    FD_FILESTAT_SET_TIMES = 1 << 23
    PATH_SYMLINK = 1 << 24
    PATH_REMOVE_DIRECTORY = 1 << 25
    PATH_UNLINK_FILE = 1 << 26
    POLL_FD_READWRITE = 1 << 27
    SOCK_SHUTDOWN = 1 << 28
    SOCK_ACCEPT = 1 << 29


ALL_RIGHTS = (1 << 30) - 1
# The most each kind of fd can have (plain ints: an IntFlag operation is a Python call, and a
# right is tested on every WASI call). A stream reads (stdin), writes (stdout, stderr) or both (null).
STREAM_RIGHTS = int(
    Rights.FD_READ | Rights.FD_WRITE | Rights.FD_FDSTAT_SET_FLAGS | Rights.POLL_FD_READWRITE | Rights.FD_FILESTAT_GET
)
INPUT_RIGHTS = STREAM_RIGHTS & ~int(Rights.FD_WRITE)
OUTPUT_RIGHTS = STREAM_RIGHTS & ~int(Rights.FD_READ)
FILE_RIGHTS = int(
    Rights.FD_DATASYNC | Rights.FD_READ | Rights.FD_SEEK | Rights.FD_FDSTAT_SET_FLAGS | Rights.FD_SYNC
    | Rights.FD_TELL | Rights.FD_WRITE | Rights.FD_ADVISE | Rights.FD_ALLOCATE | Rights.FD_FILESTAT_GET
    | Rights.FD_FILESTAT_SET_SIZE | Rights.FD_FILESTAT_SET_TIMES | Rights.POLL_FD_READWRITE
)
DIR_RIGHTS = int(
    Rights.PATH_CREATE_DIRECTORY | Rights.PATH_CREATE_FILE | Rights.PATH_LINK_SOURCE | Rights.PATH_LINK_TARGET
    | Rights.PATH_OPEN | Rights.FD_READDIR | Rights.PATH_READLINK | Rights.PATH_RENAME_SOURCE
    | Rights.PATH_RENAME_TARGET | Rights.PATH_FILESTAT_GET | Rights.PATH_FILESTAT_SET_SIZE
    | Rights.PATH_FILESTAT_SET_TIMES | Rights.FD_FILESTAT_GET | Rights.FD_FILESTAT_SET_TIMES
    | Rights.PATH_SYMLINK | Rights.PATH_REMOVE_DIRECTORY | Rights.PATH_UNLINK_FILE | Rights.FD_FDSTAT_SET_FLAGS
    | Rights.FD_SYNC | Rights.FD_DATASYNC
)


class OFlags(IntFlag):
    CREAT = 1
    DIRECTORY = 2
    EXCL = 4
    TRUNC = 8


class FdFlags(IntFlag):
    APPEND = 1
    DSYNC = 2
    NONBLOCK = 4
    RSYNC = 8
    SYNC = 16


LOOKUP_SYMLINK_FOLLOW = 1
WHENCE_SET, WHENCE_CUR, WHENCE_END = 0, 1, 2
FST_ATIM, FST_ATIM_NOW, FST_MTIM, FST_MTIM_NOW = 1, 2, 4, 8
CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME, CLOCK_THREAD_CPUTIME = 0, 1, 2, 3
EVENT_CLOCK, EVENT_FD_READ, EVENT_FD_WRITE = 0, 1, 2
SUBCLOCK_ABSTIME = 1
EVENT_FD_READWRITE_HANGUP = 1
RIFLAGS_RECV_PEEK, RIFLAGS_RECV_WAITALL = 1, 2
SDFLAGS_RD, SDFLAGS_WR = 1, 2
PREOPEN_TYPE_DIR = 0
#: Not in preview1 (its one preopen type is DIR): motte's answer for an fd below a preopened
#: directory that is not one itself (an Enarx.toml socket at fd 3, with --dir after it). wasi-libc
#: and Go stop looking for preopens at the first EBADF, and skip a type they do not know.
PREOPEN_TYPE_NOT_DIR = 1

# Struct layouts (little endian, as wasm32 lays them out).
FDSTAT = struct.Struct("<BxHxxxxQQ")  # filetype, flags, rights_base, rights_inheriting: 24 bytes
FILESTAT = struct.Struct("<QQBxxxxxxxQQQQQ")  # dev, ino, filetype, nlink, size, atim, mtim, ctim: 64
PRESTAT = struct.Struct("<BxxxI")  # tag, name length: 8 bytes
DIRENT = struct.Struct("<QQIBxxx")  # d_next, d_ino, d_namlen, d_type: 24 bytes
IOVEC = struct.Struct("<II")
SUBSCRIPTION_SIZE = 48
SUBSCRIPTION_HEAD = struct.Struct("<QB")  # userdata, tag (at offset 8)
SUBSCRIPTION_CLOCK = struct.Struct("<IxxxxQQH")  # at offset 16: id, timeout, precision, flags
SUBSCRIPTION_FD = struct.Struct("<I")  # at offset 16
EVENT = struct.Struct("<QHBxxxxxQHxxxxxx")  # userdata, error, type, nbytes, flags: 32 bytes
assert FDSTAT.size == 24 and FILESTAT.size == 64 and PRESTAT.size == 8 and DIRENT.size == 24
assert EVENT.size == 32


class WasiError(Exception):
    """A WASI call fails with ``errno`` (returned to the workload, not a trap)."""

    def __init__(self, errno: Errno, detail: str = ""):
        # The message is made only when asked for: EAGAIN is raised on every read that would block.
        super().__init__(errno, detail)
        self.errno = errno
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.errno.name}: {self.detail}" if self.detail else self.errno.name


MAX_OFFSET = (1 << 63) - 1  # a file offset or size beyond this is no off_t: EINVAL, not an OverflowError


def check_offset(value: int) -> int:
    if not 0 <= value <= MAX_OFFSET:
        raise WasiError(Errno.INVAL)
    return value
