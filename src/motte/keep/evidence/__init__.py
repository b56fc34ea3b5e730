"""Evidence the keep gathers about itself, bound to its key: one source per backend.

A source takes the 64 bytes of report data (:func:`motte.shared.steward_protocol.key_binding` of
the keep's public key) and returns :class:`Evidence`: the technology and the DER value that goes
into the CSR's attestation extension. ``nil`` and ``kvm`` keeps have nothing to attest: their
evidence is the KVM OID with an empty value, which a Steward refuses unless its policy allows it.

The SNP and TDX sources talk to the guest kernel (configfs-tsm, ``/dev/sev-guest``); they are
imported only when asked for, so the nil keep never loads ``ctypes`` or ``fcntl``.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from motte.shared.errors import MotteError
from motte.shared.steward_protocol import EVIDENCE_OIDS

REPORT_DATA_SIZE = 64


class Evidence(NamedTuple):
    technology: str  # "kvm" | "snp" | "tdx" | "sgx": names the extension's OID
    value: bytes  # the DER evidence; empty for kvm

    @property
    def oid(self) -> str:
        return EVIDENCE_OIDS[self.technology]


class EvidenceSource(Protocol):
    """Where a keep's evidence comes from. ``technology`` also chooses the key curve and the hash
    of the report data (P-384 / SHA-384 on SNP, P-256 / SHA-256 elsewhere)."""

    @property
    def technology(self) -> str: ...

    def collect(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> bytes:
    if len(report_data) != REPORT_DATA_SIZE:
        raise MotteError(f"report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return report_data


class NoEvidence:
    """``nil`` and ``kvm`` keeps: the host can read their memory, so there is nothing to prove."""

    technology = "kvm"

    def collect(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        return Evidence("kvm", b"")


def source_for(backend: str) -> EvidenceSource:
    """The evidence source of a backend, with the kernel interfaces at their usual places."""
    if backend in ("nil", "kvm"):
        return NoEvidence()
    if backend == "snp":
        from motte.keep.evidence.snp import SnpEvidenceSource

        return SnpEvidenceSource()
    if backend == "tdx":
        from motte.keep.evidence.tdx import TdxEvidenceSource

        return TdxEvidenceSource()
    raise MotteError(f"no evidence source for backend {backend!r}", hint="one of nil, kvm, snp, tdx")
