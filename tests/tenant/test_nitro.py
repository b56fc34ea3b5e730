"""AWS Nitro Enclaves attestation documents over the real vectors."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import cbor2
import pytest

from motte.tenant.attest import Reason, VerificationError, evaluate, load_policy, verify, verify_nitro
from motte.tenant.attest.nitro import AWS_NITRO_ROOT_G1_SHA256, aws_nitro_root_der
from tests.tenant.conftest import at

NOW = at("2024-09-17T20:48:11Z")


def doc(vectors: Path, name: str = "test_verify_doc.b64") -> bytes:
    return base64.b64decode((vectors / "nitro" / "eternis" / name).read_text())


def test_builtin_root_is_the_cabundle_root(vectors: Path) -> None:
    payload = cbor2.loads(cbor2.loads(doc(vectors))[2])
    assert payload["cabundle"][0] == aws_nitro_root_der()
    assert hashlib.sha256(aws_nitro_root_der()).hexdigest() == AWS_NITRO_ROOT_G1_SHA256


def test_valid_document(vectors: Path) -> None:
    claims = verify_nitro(doc(vectors), now=NOW)
    assert claims.verified and claims.technology == "nitro"
    assert len(claims.measurements) == 16
    assert claims.measurements["pcr0"] == bytes(48)
    assert claims.measurements["pcr3"].hex().startswith("671ca1e328f75015")
    assert claims.debug is True  # PCR0..2 all zero: a debug-mode enclave
    assert claims.platform_id["module_id"] == "i-0bbf1bfe232b8c2ce-enc019201afdaee4f17"
    assert claims.details["nonce"] == bytes(19) + b"\x01"
    assert claims.details["timestamp"] == "2024-09-17T20:47:10.288000+00:00"
    assert claims.report_data is not None and claims.report_data.startswith(bytes.fromhex("122026da"))


def test_invalid_document_fails_the_cose_signature(vectors: Path) -> None:
    with pytest.raises(VerificationError) as err:
        verify_nitro(doc(vectors, "invalid_attestation.b64"), now=at("2024-07-23T21:30:00Z"))
    assert err.value.reason is Reason.EVIDENCE_SIGNATURE
    assert err.value.claims is not None and err.value.claims.checks  # the chain verified first


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        ("2024-09-17T23:50:00Z", Reason.CERTIFICATE_EXPIRED),  # the leaf lives three hours
        ("2024-09-17T20:00:00Z", Reason.CERTIFICATE_NOT_YET_VALID),
    ],
)
def test_outside_the_leaf_window(vectors: Path, when: str, reason: Reason) -> None:
    with pytest.raises(VerificationError) as err:
        verify_nitro(doc(vectors), now=at(when))
    assert err.value.reason is reason


def _rebuild(data: bytes, *, payload_edit: dict[str, object] | None = None, unprotected: object = None) -> bytes:
    protected, unprot, payload, signature = cbor2.loads(data)
    if payload_edit is not None:
        fields = cbor2.loads(payload)
        fields.update(payload_edit)
        payload = cbor2.dumps(fields)
    return cbor2.dumps([protected, unprot if unprotected is None else unprotected, payload, signature])


def test_foreign_root_is_refused(vectors: Path) -> None:
    data = doc(vectors)
    bundle = cbor2.loads(cbor2.loads(data)[2])["cabundle"]
    with pytest.raises(VerificationError) as err:
        verify_nitro(_rebuild(data, payload_edit={"cabundle": bundle[1:]}), now=NOW)
    assert err.value.reason is Reason.UNTRUSTED_ROOT


def test_changed_payload_fails_the_signature(vectors: Path) -> None:
    with pytest.raises(VerificationError) as err:
        verify_nitro(_rebuild(doc(vectors), payload_edit={"user_data": b"other"}), now=NOW)
    assert err.value.reason is Reason.EVIDENCE_SIGNATURE


def test_unprotected_header_is_refused(vectors: Path) -> None:
    with pytest.raises(VerificationError) as err:
        verify_nitro(_rebuild(doc(vectors), unprotected={4: b"kid"}), now=NOW)
    assert err.value.reason is Reason.MALFORMED


def test_unknown_payload_key_is_refused(vectors: Path) -> None:
    with pytest.raises(VerificationError) as err:
        verify_nitro(_rebuild(doc(vectors), payload_edit={"extra": 1}), now=NOW)
    assert err.value.reason is Reason.MALFORMED and "extra" in err.value.message


def test_tagged_cose_sign1_is_accepted(vectors: Path) -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(doc(vectors))))
    assert verify_nitro(tagged, now=NOW).verified


def test_base64_text_through_verify(vectors: Path) -> None:
    text = (vectors / "nitro" / "eternis" / "test_verify_doc.b64").read_bytes()
    assert verify(text, now=NOW).technology == "nitro"


def test_policy_refuses_debug_unless_allowed(vectors: Path) -> None:
    claims = verify_nitro(doc(vectors), now=NOW)
    pcr0 = claims.measurements["pcr0"].hex()
    strict = evaluate(claims, load_policy(f'[nitro]\npcrs = {{ 0 = ["{pcr0}"] }}\n'))
    assert [v.reason for v in strict.violations] == [Reason.POLICY_DEBUG]
    assert evaluate(claims, load_policy(f'debug = true\n[nitro]\npcrs = {{ 0 = ["{pcr0}"] }}\n')).accepted
    wrong = evaluate(claims, load_policy(f'debug = true\n[nitro]\npcrs = {{ 0 = ["{"ab" * 48}"] }}\n'))
    assert [v.reason for v in wrong.violations] == [Reason.POLICY_MEASUREMENT]
