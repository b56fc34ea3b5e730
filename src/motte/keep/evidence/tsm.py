"""The kernel's configfs-tsm report interface (Linux 6.7+), shared by SNP and TDX guests.

    /sys/kernel/config/tsm/report/<name>/     mkdir makes a request; rmdir ends it
        provider     read: "sev_guest" or "tdx_guest"
        privlevel    write (SNP): the VMPL to report at; optional
        inblob       write: the 64 bytes of report data
        outblob      read: the SNP report / the TDX quote, generated on first read
        auxblob      read (SNP): the host's certificate table (VCEK, ASK, ARK), if it supplied one
        generation   read: how many writes the request has seen

Another process may write the same entry between our ``inblob`` write and ``outblob`` read, so the
generation is read before and after: if it is not the count of our own writes, the outblob may
answer someone else's inblob, and the request is made again.

The file operations go through :class:`TsmFiles`, so tests run this flow against a fake kernel that
keeps a real directory tree in a temporary folder.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import NamedTuple

from motte.shared.errors import MotteError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
MAX_BLOB = 1 << 20  # outblob is ~1-8 KiB, auxblob a few certificates: anything near this is wrong
ATTEMPTS = 3
HINT = "configfs-tsm needs Linux 6.7+ with CONFIG_TSM_REPORTS, configfs mounted at /sys/kernel/config, and root"


class TsmFiles:
    """The kernel-facing file operations (configfs attributes exist already: never create one)."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path) -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = []
            total = 0
            while chunk := os.read(fd, 64 * 1024):
                total += len(chunk)
                if total > MAX_BLOB:
                    raise MotteError(f"{path} is larger than {MAX_BLOB} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def write(self, path: Path, data: bytes) -> None:
        # One write(2) call: a configfs binary attribute takes its whole value at once.
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise MotteError(f"short write to {path}")
        finally:
            os.close(fd)


class TsmReport(NamedTuple):
    outblob: bytes
    auxblob: bytes
    provider: str
    generation: int


def tsm_available(root: Path = TSM_REPORT_ROOT) -> bool:
    return root.is_dir()


def tsm_report(
    inblob: bytes,
    *,
    provider: str,
    root: Path = TSM_REPORT_ROOT,
    privlevel: int | None = None,
    want_aux: bool = False,
    files: TsmFiles | None = None,
    attempts: int = ATTEMPTS,
) -> TsmReport:
    """Ask the kernel's ``provider`` ("sev_guest", "tdx_guest") for a report over ``inblob``."""
    files = files or TsmFiles()
    if not tsm_available(root):
        raise MotteError(f"configfs-tsm is not available: {root} is not a directory", hint=HINT)
    for _ in range(attempts):
        entry = root / f"motte-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            files.mkdir(entry)
        except OSError as exc:
            raise MotteError(
                f"cannot create the configfs-tsm request {entry}: {exc.strerror or exc}", hint=HINT
            ) from exc
        try:
            report = _one_request(files, entry, inblob, provider, privlevel, want_aux)
        finally:
            try:
                files.rmdir(entry)
            except OSError:
                pass  # an entry left behind holds no secret (report data is public) and blocks nothing
        if report is not None:
            return report
    raise MotteError(
        f"configfs-tsm: another process kept changing the request ({attempts} attempts)",
        hint="is another attestation agent using configfs-tsm at the same time?",
    )


def _one_request(
    files: TsmFiles, entry: Path, inblob: bytes, provider: str, privlevel: int | None, want_aux: bool
) -> TsmReport | None:
    try:
        actual = files.read(entry / "provider").decode("ascii", "replace").strip()
        if actual != provider:
            raise MotteError(
                f"configfs-tsm provider is {actual!r}, not {provider!r}", hint="wrong backend for this guest?"
            )
        writes = 0
        if privlevel is not None:
            files.write(entry / "privlevel", str(privlevel).encode())
            writes += 1
        files.write(entry / "inblob", inblob)
        writes += 1
        before = _generation(files, entry)
        if before != writes:
            return None
        outblob = files.read(entry / "outblob")
        auxblob = b""
        if want_aux:
            try:
                auxblob = files.read(entry / "auxblob")
            except FileNotFoundError:
                auxblob = b""  # older kernels: no auxblob attribute
        if _generation(files, entry) != before:
            return None
    except OSError as exc:
        what = "the hardware refused the request" if exc.errno in (errno.EIO, errno.EINVAL) else exc.strerror
        raise MotteError(f"configfs-tsm request {entry.name}: {what or exc}", hint=HINT) from exc
    if not outblob:
        raise MotteError(f"configfs-tsm returned an empty report ({provider})", hint=HINT)
    return TsmReport(outblob, auxblob, actual, before)


def _generation(files: TsmFiles, entry: Path) -> int:
    text = files.read(entry / "generation").decode("ascii", "replace").strip()
    if not text.isdigit():
        raise MotteError(f"configfs-tsm generation is not a number: {text!r}")
    return int(text)
