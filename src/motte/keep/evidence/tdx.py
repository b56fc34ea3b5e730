"""Intel TDX evidence from inside the trust domain: a TD quote through configfs-tsm.

The kernel's ``tdx_guest`` provider turns the 64 bytes of report data into a TDREPORT and has the
host's quoting enclave sign it (GetQuote); ``outblob`` is the quote (v4, or v5 on newer modules).
The Steward needs Intel's collateral to verify it. The keep cannot fetch it (it has no network of
its own), but the collateral is signed by Intel, so the host may fetch it and hand it in:
:class:`TdxEvidenceSource` puts it beside the quote when it has it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from motte.keep.evidence import Evidence, check_report_data
from motte.keep.evidence.encoding import encode_dcap_evidence
from motte.keep.evidence.tsm import TSM_REPORT_ROOT, TsmFiles, tsm_report
from motte.shared.errors import MotteError

TEE_TDX = 0x81
QUOTE_HEADER = struct.Struct("<HHI")  # version, attestation key type, TEE type
TD_REPORT_DATA_OFFSET = {4: 48 + 520, 5: 48 + 6 + 520}  # header, (v5: body type + size), TD report body


def check_quote(quote: bytes, report_data: bytes) -> bytes:
    """Catch a wrong answer here, with a clear message, rather than as a refusal at the Steward."""
    if len(quote) < QUOTE_HEADER.size:
        raise MotteError(f"TD quote is truncated ({len(quote)} bytes)")
    version, _, tee = QUOTE_HEADER.unpack_from(quote)
    if version not in TD_REPORT_DATA_OFFSET or tee != TEE_TDX:
        raise MotteError(f"configfs-tsm returned a quote of version {version}, TEE type {tee:#x}: not a TDX quote")
    at = TD_REPORT_DATA_OFFSET[version]
    if quote[at : at + 64] != report_data:
        raise MotteError("the TD quote does not carry the report data the keep asked for")
    return quote


class TdxEvidenceSource:
    technology = "tdx"

    def __init__(
        self, *, tsm_root: Path = TSM_REPORT_ROOT, tsm_files: TsmFiles | None = None, collateral: str | None = None
    ) -> None:
        self.tsm_root = tsm_root
        self.tsm_files = tsm_files
        self.collateral = collateral

    def collect(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        got = tsm_report(report_data, provider="tdx_guest", root=self.tsm_root, files=self.tsm_files)
        return Evidence("tdx", encode_dcap_evidence(check_quote(got.outblob, report_data), self.collateral))
