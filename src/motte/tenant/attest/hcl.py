"""Azure confidential VMs wrap the SNP report in an HCL report (read from vTPM NV index 0x01400001).

Layout: a 32-byte header starting with "HCLA", the hardware report at offset 0x20, then a 20-byte
IGVM request-data header (data size, version, report type, hash type, variable-data size) and the
runtime data (JSON). The hardware report's report_data is H(runtime data) followed by zeros, which
is how the runtime data (and the vTPM key in it) is bound to the signed report.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from motte.tenant.attest.binreader import Reader
from motte.tenant.attest.claims import Reason, VerificationError
from motte.tenant.attest.snp import REPORT_SIZE

MAGIC = b"HCLA"
HEADER_SIZE = 0x20
REPORT_TYPE_SNP = 2
MAX_RUNTIME_DATA = 64 * 1024  # generous: real runtime data is a few kilobytes of JSON
_HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}


@dataclass(frozen=True)
class HclReport:
    report: bytes
    runtime_data: bytes
    hash_name: str

    def expected_report_data(self) -> bytes:
        digest = hashlib.new(self.hash_name, self.runtime_data).digest()
        return digest + bytes(64 - len(digest))


def is_hcl(data: bytes) -> bool:
    return data[:4] == MAGIC


def parse_hcl(data: bytes) -> HclReport:
    r = Reader(data, "HCL report")
    if r.take(4, "signature") != MAGIC:
        raise VerificationError(Reason.MALFORMED, "HCL report: missing 'HCLA' signature")
    r.take(12, "version, report size, request type")
    status = r.u32("status")
    if status != 0:
        raise VerificationError(Reason.MALFORMED, f"HCL report: status {status} (the HCL says it failed)")
    r.take(12, "reserved")
    report = r.take(REPORT_SIZE, "SNP report")
    r.u32("data size")
    r.u32("version")
    report_type = r.u32("report type")
    if report_type != REPORT_TYPE_SNP:
        raise VerificationError(
            Reason.UNSUPPORTED, f"HCL report: report type {report_type} is not SEV-SNP ({REPORT_TYPE_SNP})"
        )
    hash_type = r.u32("hash type")
    hash_name = _HASHES.get(hash_type)
    if hash_name is None:
        raise VerificationError(Reason.MALFORMED, f"HCL report: unknown runtime-data hash type {hash_type}")
    size = r.u32("runtime data size")
    if size > MAX_RUNTIME_DATA:
        raise VerificationError(Reason.MALFORMED, f"HCL report: runtime data of {size} bytes is too large")
    runtime = r.take(size, "runtime data")
    # The NV index is a fixed-size buffer: whatever follows the runtime data must be padding.
    if any(r.take(r.remaining, "padding")):
        raise VerificationError(Reason.MALFORMED, "HCL report: non-zero bytes after the runtime data")
    return HclReport(report=report, runtime_data=runtime, hash_name=hash_name)
