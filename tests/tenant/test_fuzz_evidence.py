"""Property tests: truncated, extended or bit-flipped evidence always raises VerificationError.

Never an uncaught exception, never acceptance. One exception, by design: a DCAP quote may carry
trailing zero padding (the real TDX vector has 70 bytes of it), so quotes are extended here with
suffixes holding at least one non-zero byte, and truncated only into the bytes before the padding.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motte.tenant.attest import Claims, VerificationError, verify, verify_dcap, verify_nitro, verify_snp
from motte.tenant.attest.dcap import load_collateral
from tests.tenant.conftest import VECTORS, at

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

Verifier = Callable[[bytes], Claims]


def _read(*parts: str) -> bytes:
    return VECTORS.joinpath(*parts).read_bytes()


def _snp() -> tuple[bytes, Verifier]:
    report = bytes.fromhex(_read("snp", "virtee-sev-milan-v2", "report_milan.hex").decode().strip())
    certs = [_read("snp", "virtee-sev-milan-v2", "vcek_milan.der")]
    return report, lambda data: verify_snp(data, certs=certs, now=at("2025-12-06T00:00:00Z"))


def _snp_vcek_cert() -> tuple[bytes, Verifier]:
    """The VCEK travels with the report (Enarx puts it in the CSR): its bytes are evidence too."""
    report = bytes.fromhex(_read("snp", "virtee-sev-milan-v2", "report_milan.hex").decode().strip())
    vcek = _read("snp", "virtee-sev-milan-v2", "vcek_milan.der")
    return vcek, lambda data: verify_snp(report, certs=[data], now=at("2025-12-06T00:00:00Z"))


def _snp_vlek() -> tuple[bytes, Verifier]:
    report = _read("snp", "trustee-milan-vlek", "test-vlek-report.bin")
    certs = [_read("snp", "trustee-milan-vlek", "test-vlek.der")]
    return report, lambda data: verify_snp(data, certs=certs, now=at("2025-06-01T00:00:00Z"))


def _dcap(folder: str, quote: str, collateral: str, now: datetime) -> Callable[[], tuple[bytes, Verifier]]:
    def make() -> tuple[bytes, Verifier]:
        loaded = load_collateral(_read("dcap", folder, collateral))
        return _read("dcap", folder, quote), lambda data: verify_dcap(data, loaded, now=now)

    return make


def _nitro() -> tuple[bytes, Verifier]:
    doc = base64.b64decode(_read("nitro", "eternis", "test_verify_doc.b64"))
    return doc, lambda data: verify_nitro(data, now=at("2024-09-17T20:48:11Z"))


CASES: dict[str, Callable[[], tuple[bytes, Verifier]]] = {
    "snp": _snp,
    "snp-vlek": _snp_vlek,
    "snp-vcek-cert": _snp_vcek_cert,
    "tdx": _dcap("phala-tdx", "tdx_quote", "tdx_quote_collateral.json", at("2025-07-01T00:00:00Z")),
    "sgx": _dcap("phala-sgx", "sgx_quote", "sgx_quote_collateral.json", at("2025-07-01T00:00:00Z")),
    "nitro": _nitro,
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, vectors: Path) -> tuple[str, bytes, Verifier]:
    name: str = request.param
    evidence, check = CASES[name]()
    claims = check(evidence)
    assert claims.verified  # the unmodified evidence is accepted, so refusals below mean something
    padding = claims.details.get("padding_bytes", 0)
    assert isinstance(padding, int)
    return name, evidence[: len(evidence) - padding], check


def refused(check: Verifier, data: bytes) -> None:
    with pytest.raises(VerificationError):
        check(data)


@SETTINGS
@given(data=st.data())
def test_truncated(case: tuple[str, bytes, Verifier], data: st.DataObject) -> None:
    _, evidence, check = case  # evidence without any trailing padding
    refused(check, evidence[: data.draw(st.integers(0, len(evidence) - 1))])


@SETTINGS
@given(suffix=st.binary(min_size=1, max_size=4096))
def test_extended(case: tuple[str, bytes, Verifier], suffix: bytes) -> None:
    name, evidence, check = case
    if name in ("tdx", "sgx") and not any(suffix):
        suffix += b"\x01"  # zero padding after a quote is tolerated (see the module docstring)
    refused(check, evidence + suffix)


@SETTINGS
@given(data=st.data())
def test_bit_flipped(case: tuple[str, bytes, Verifier], data: st.DataObject) -> None:
    _, evidence, check = case
    bit = data.draw(st.integers(0, len(evidence) * 8 - 1))
    flipped = bytearray(evidence)
    flipped[bit // 8] ^= 1 << (bit % 8)
    refused(check, bytes(flipped))


@SETTINGS
@given(blob=st.binary(max_size=6000), kind=st.sampled_from(["auto", "snp", "tdx", "sgx", "nitro"]))
def test_random_bytes_of_any_kind(vectors: Path, blob: bytes, kind: str) -> None:
    collateral = _read("dcap", "phala-tdx", "tdx_quote_collateral.json")
    with pytest.raises(VerificationError):
        verify(blob, kind, now=at("2025-07-01T00:00:00Z"), collateral=collateral)


def test_every_single_bit_of_the_snp_report(vectors: Path) -> None:
    """Exhaustive for SNP (1184 x 8 flips): each one is refused with a typed error."""
    evidence, check = _snp()
    for bit in range(len(evidence) * 8):
        flipped = bytearray(evidence)
        flipped[bit // 8] ^= 1 << (bit % 8)
        refused(check, bytes(flipped))


@pytest.mark.parametrize(
    ("name", "bit"),
    [
        ("tdx", 10417),  # PCK certificate version field: x509.InvalidVersion
        ("tdx", 13570),  # a name attribute turned into a BIT STRING: TypeError
        ("tdx", 13672),  # the key-type OID: UnsupportedAlgorithm
        ("sgx", 12048),
        ("nitro", 696),  # the timestamp, far beyond year 9999
        ("nitro", 7552),  # a cabundle certificate's version
        ("snp-vcek-cert", 6336),  # the VCEK's outer (unsigned) RSASSA-PSS parameters
        ("snp-vcek-cert", 6776),  # the unused-bits byte of the VCEK's signature BIT STRING
    ],
)
def test_flips_found_by_an_exhaustive_sweep(vectors: Path, name: str, bit: int) -> None:
    """Each of these once escaped as a non-ValueError exception or was accepted; found by flipping
    every bit of each vector (a sweep too slow for the suite: about 40 s per DCAP quote)."""
    evidence, check = CASES[name]()
    flipped = bytearray(evidence)
    flipped[bit // 8] ^= 1 << (bit % 8)
    refused(check, bytes(flipped))
