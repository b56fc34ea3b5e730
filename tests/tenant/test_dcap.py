"""Intel DCAP (TDX quote v4/v5, SGX quote v3) verification over the real vectors."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import dcap_qvl
import pytest

from motte.tenant.attest import Reason, VerificationError, evaluate, load_policy, verify, verify_dcap
from motte.tenant.attest.dcap import intel_root_der, load_collateral
from motte.tenant.attest.roots import read_root
from tests.tenant.conftest import at


@dataclass(frozen=True)
class DcapVector:
    folder: str
    quote: str
    collateral: str
    now: str

    def read(self, vectors: Path) -> tuple[bytes, bytes]:
        base = vectors / "dcap" / self.folder
        return (base / self.quote).read_bytes(), (base / self.collateral).read_bytes()


TDX = DcapVector("phala-tdx", "tdx_quote", "tdx_quote_collateral.json", "2025-07-01T00:00:00Z")
SGX = DcapVector("phala-sgx", "sgx_quote", "sgx_quote_collateral.json", "2025-07-01T00:00:00Z")
TDX_OUTDATED = DcapVector(
    "phala-tdx_outdated", "tdx_quote_outdated", "tdx_quote_outdated_collateral.json", "2026-03-01T00:00:00Z"
)


def test_builtin_intel_root_is_the_vector_root(vectors: Path) -> None:
    assert intel_root_der() == (vectors / "dcap" / "intel-root" / "Intel_SGX_RootCA.der").read_bytes()


def test_tdx_v4_up_to_date(vectors: Path) -> None:
    quote, collateral = TDX.read(vectors)
    claims = verify_dcap(quote, collateral, now=at(TDX.now))
    assert claims.verified and claims.technology == "tdx" and claims.version == 4
    assert claims.tcb_status == "UpToDate" and claims.advisory_ids == []
    assert claims.measurements["mrtd"].hex().startswith("91eb2b44d141d4ec")
    assert claims.measurements["rtmr0"].hex().startswith("44c0197b39157fdd")
    assert claims.details["tee_tcb_svn"] == bytes.fromhex("06010300000000000000000000000000")
    assert claims.debug is False
    assert claims.report_data is not None and claims.report_data.hex().startswith("9a9d48e7f6799642")
    assert claims.details["padding_bytes"] == 70
    # The same answer as dcap-qvl's own entry point with its own root.
    plain = dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(collateral.decode()), 1751328000)
    assert (plain.status, list(plain.advisory_ids)) == (claims.tcb_status, claims.advisory_ids)


def test_sgx_v3_needs_configuration(vectors: Path) -> None:
    quote, collateral = SGX.read(vectors)
    claims = verify_dcap(quote, collateral, now=at(SGX.now))
    assert claims.verified and claims.technology == "sgx" and claims.version == 3
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert claims.advisory_ids == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert claims.measurements["mrenclave"].hex().startswith("33d8736db756ed49")
    assert claims.signer["mrsigner"].hex().startswith("815f42f11cf64430")
    assert claims.report_data is not None and claims.report_data.startswith(b"Hello, world!")
    assert claims.debug is False


def test_tdx_v5_with_no_matching_tcb_level_is_refused(vectors: Path) -> None:
    quote, collateral = TDX_OUTDATED.read(vectors)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, collateral, now=at(TDX_OUTDATED.now))
    assert err.value.reason is Reason.TCB_NO_MATCH
    assert "No matching TCB level" in err.value.message
    claims = err.value.claims
    assert claims is not None and not claims.verified
    assert (claims.technology, claims.version) == ("tdx", 5)
    assert "mrservicetd" in claims.measurements  # TD report 1.5 body


@pytest.mark.parametrize(
    ("vector", "when"),
    [
        (TDX, "2025-06-01T00:00:00Z"),  # before the TCB info was issued
        (TDX, "2025-08-01T00:00:00Z"),  # after it expired
        (TDX, "2030-01-01T00:00:00Z"),
        (SGX, "2025-07-20T00:00:00Z"),
        (TDX_OUTDATED, "2026-04-01T00:00:00Z"),
    ],
)
def test_out_of_window_times_are_refused(vectors: Path, vector: DcapVector, when: str) -> None:
    quote, collateral = vector.read(vectors)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, collateral, now=at(when))
    assert err.value.reason is Reason.COLLATERAL_EXPIRED


def test_collateral_of_another_quote_is_refused(vectors: Path) -> None:
    quote, _ = TDX.read(vectors)
    _, sgx_collateral = SGX.read(vectors)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, sgx_collateral, now=at(TDX.now))
    assert err.value.reason is Reason.COLLATERAL_INVALID


@pytest.mark.parametrize("bad", [b"{}", b"not json", b"\xff\xfe", b"[]"])
def test_unparseable_collateral(vectors: Path, bad: bytes) -> None:
    quote, _ = TDX.read(vectors)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, bad, now=at(TDX.now))
    assert err.value.reason is Reason.COLLATERAL_INVALID


def test_collateral_is_not_reserialised(vectors: Path) -> None:
    """The TCB info signature covers the exact JSON text: reformatting it must break verification."""
    import json

    quote, collateral = TDX.read(vectors)
    doc = json.loads(collateral)
    doc["tcb_info"] = json.dumps(json.loads(doc["tcb_info"]), indent=1)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, json.dumps(doc), now=at(TDX.now))
    assert err.value.reason in (Reason.COLLATERAL_INVALID, Reason.CERTIFICATE_SIGNATURE)


def test_preloaded_collateral(vectors: Path) -> None:
    quote, collateral = TDX.read(vectors)
    assert verify_dcap(quote, load_collateral(collateral), now=at(TDX.now)).verified


def test_other_root_is_refused(vectors: Path) -> None:
    quote, collateral = TDX.read(vectors)
    import cryptography.x509 as x509
    from cryptography.hazmat.primitives.serialization import Encoding

    other = x509.load_pem_x509_certificate(read_root("aws_nitro_root_g1.pem")).public_bytes(Encoding.DER)
    with pytest.raises(VerificationError) as err:
        verify_dcap(quote, collateral, now=at(TDX.now), root_der=other)
    assert err.value.reason is Reason.UNTRUSTED_ROOT


class TestUnsignedBytes:
    """Bytes outside the signatures must not vary: each of these was accepted by dcap-qvl alone."""

    def refused(self, vectors: Path, quote: bytes) -> VerificationError:
        _, collateral = TDX.read(vectors)
        with pytest.raises(VerificationError) as err:
            verify_dcap(quote, collateral, now=at(TDX.now))
        return err.value

    def test_signature_length_field(self, vectors: Path) -> None:
        quote = bytearray(TDX.read(vectors)[0])
        quote[632] ^= 1
        assert self.refused(vectors, bytes(quote)).reason is Reason.MALFORMED

    def test_whitespace_in_pem_chain(self, vectors: Path) -> None:
        quote = bytearray(TDX.read(vectors)[0])
        assert quote[2000:2001] == b"\n"
        quote[2000] ^= 1
        assert self.refused(vectors, bytes(quote)).reason is Reason.MALFORMED

    def test_embedded_root_copy(self, vectors: Path) -> None:
        quote = bytearray(TDX.read(vectors)[0])
        quote[4900] ^= 1
        assert self.refused(vectors, bytes(quote)).reason in (Reason.MALFORMED, Reason.UNTRUSTED_ROOT)

    def test_nonzero_padding(self, vectors: Path) -> None:
        quote = bytearray(TDX.read(vectors)[0])
        quote[-1] = 1
        assert self.refused(vectors, bytes(quote)).reason is Reason.MALFORMED

    def test_zero_padding_is_tolerated(self, vectors: Path) -> None:
        quote, collateral = TDX.read(vectors)
        assert verify_dcap(quote + bytes(10), collateral, now=at(TDX.now)).details["padding_bytes"] == 80

    def test_unsupported_v5_body_type(self, vectors: Path) -> None:
        quote = bytearray(TDX_OUTDATED.read(vectors)[0])
        struct.pack_into("<H", quote, 48, 4)
        assert self.refused(vectors, bytes(quote)).reason is Reason.UNSUPPORTED


def test_policy_on_tcb_status_and_advisories(vectors: Path) -> None:
    quote, collateral = SGX.read(vectors)
    claims = verify_dcap(quote, collateral, now=at(SGX.now))
    pin = f'[sgx]\nmrenclave = ["{claims.measurements["mrenclave"].hex()}"]\n'
    refused = evaluate(claims, load_policy(pin))
    assert [v.reason for v in refused.violations] == [Reason.TCB_STATUS, Reason.TCB_STATUS]
    status_only = evaluate(claims, load_policy(pin + 'tcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\n'))
    assert [v.reason for v in status_only.violations] == [Reason.TCB_STATUS]
    assert "INTEL-SA-00289" in status_only.violations[0].message
    allowed = load_policy(
        pin + 'tcb_statuses = ["UpToDate", "ConfigurationAndSWHardeningNeeded"]\n'
        'advisories = ["INTEL-SA-00289", "INTEL-SA-00615"]\n'
    )
    assert evaluate(claims, allowed).accepted


def test_verify_dispatches_and_checks_the_kind(vectors: Path) -> None:
    quote, collateral = TDX.read(vectors)
    assert verify(quote, now=at(TDX.now), collateral=collateral).technology == "tdx"
    assert verify(quote.hex().encode(), "tdx", now=at(TDX.now), collateral=collateral).verified
    with pytest.raises(VerificationError) as err:
        verify(quote, "sgx", now=at(TDX.now), collateral=collateral)
    assert err.value.reason is Reason.UNKNOWN_KIND
    with pytest.raises(VerificationError) as err:
        verify(quote, now=at(TDX.now))
    assert err.value.reason is Reason.COLLATERAL_INVALID
