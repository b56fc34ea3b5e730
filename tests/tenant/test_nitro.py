"""AWS Nitro Enclaves attestation documents over the real vectors."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

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


# --- forged chains: each must be refused for its own reason -------------------------------------


class Pki:
    """Certificates and Nitro documents made here: a root of our own, or the real AWS chain with
    our certificates hung below it."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = self.cert("forged root", self.root_key.public_key(), "forged root", self.root_key, ca=True)

    @staticmethod
    def cert(subject: str | x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: str | x509.Name,
             signer: ec.EllipticCurvePrivateKey, *, ca: bool | None) -> x509.Certificate:
        def name(value: str | x509.Name) -> x509.Name:
            return value if isinstance(value, x509.Name) else x509.Name(
                [x509.NameAttribute(x509.NameOID.COMMON_NAME, value)])

        builder = (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
        )
        if ca is not None:
            builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        return builder.sign(signer, hashes.SHA384())

    @staticmethod
    def document(leaf_key: ec.EllipticCurvePrivateKey, leaf: x509.Certificate, bundle: list[bytes], *,
                 when: datetime = NOW) -> bytes:
        payload = cbor2.dumps({
            "module_id": "i-forged", "digest": "SHA384", "timestamp": int(when.timestamp() * 1000),
            "pcrs": {i: bytes([i + 1]) * 48 for i in range(3)},
            "certificate": leaf.public_bytes(Encoding.DER), "cabundle": bundle,
        })
        protected = cbor2.dumps({1: -35})
        r, s = decode_dss_signature(leaf_key.sign(cbor2.dumps(["Signature1", protected, b"", payload]),
                                                  ec.ECDSA(hashes.SHA384())))
        return cbor2.dumps([protected, {}, payload, r.to_bytes(48, "big") + s.to_bytes(48, "big")])

    def chain(self, *, intermediate_ca: bool | None = True,
              when: datetime = NOW) -> bytes:
        """root -> intermediate -> leaf, all ours, every signature right."""
        middle_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
        middle = self.cert("forged intermediate", middle_key.public_key(), self.root.subject, self.root_key,
                           ca=intermediate_ca)
        leaf = self.cert("forged leaf", leaf_key.public_key(), middle.subject, middle_key, ca=False)
        bundle = [c.public_bytes(Encoding.DER) for c in (self.root, middle)]
        return self.document(leaf_key, leaf, bundle, when=when)

    def root_der(self) -> bytes:
        return self.root.public_bytes(Encoding.DER)


def _aws_bundle(vectors: Path) -> list[x509.Certificate]:
    payload = cbor2.loads(cbor2.loads(doc(vectors))[2])
    return [x509.load_der_x509_certificate(der) for der in payload["cabundle"]]


def _refused(document: bytes, **kwargs: object) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        verify_nitro(document, now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    return err.value


def test_a_chain_of_our_own_verifies_against_its_own_root() -> None:
    """The control for the forgeries below: each differs from this in the one thing it tests."""
    pki = Pki()
    claims = verify_nitro(pki.chain(), now=NOW, root_der=pki.root_der())
    assert claims.verified and claims.platform_id["module_id"] == "i-forged"


def test_our_own_leaf_under_the_real_aws_chain_is_refused(vectors: Path) -> None:
    bundle = _aws_bundle(vectors)
    key = ec.generate_private_key(ec.SECP384R1())
    # The leaf names AWS's last intermediate as its issuer, but that key never signed it.
    leaf = Pki.cert("i-forged.aws.nitro-enclaves", key.public_key(), bundle[-1].subject, key, ca=False)
    document = Pki.document(key, leaf, [c.public_bytes(Encoding.DER) for c in bundle])
    err = _refused(document)
    assert err.reason is Reason.CERTIFICATE_SIGNATURE and "not signed by its predecessor" in err.message


def test_our_own_intermediate_under_the_real_aws_root_is_refused(vectors: Path) -> None:
    root = _aws_bundle(vectors)[0]
    middle_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    middle = Pki.cert("forged intermediate", middle_key.public_key(), root.subject, middle_key, ca=True)
    leaf = Pki.cert("forged leaf", leaf_key.public_key(), middle.subject, middle_key, ca=False)
    document = Pki.document(leaf_key, leaf, [root.public_bytes(Encoding.DER), middle.public_bytes(Encoding.DER)])
    err = _refused(document)
    assert err.reason is Reason.CERTIFICATE_SIGNATURE and "forged intermediate" in err.message


@pytest.mark.parametrize("constraint", [False, None])  # cA false, or no basicConstraints at all
def test_a_non_ca_in_the_chain_is_refused(constraint: bool | None) -> None:
    pki = Pki()
    err = _refused(pki.chain(intermediate_ca=constraint), root_der=pki.root_der())
    assert err.reason is Reason.CERTIFICATE_SIGNATURE and "forged intermediate" in err.message
    assert "is not a CA" in err.message


def test_a_document_dated_in_the_future_is_refused() -> None:
    pki = Pki()
    assert verify_nitro(pki.chain(when=NOW + timedelta(minutes=4)), now=NOW, root_der=pki.root_der()).verified
    err = _refused(pki.chain(when=NOW + timedelta(hours=1)), root_der=pki.root_der())
    assert err.reason is Reason.DOCUMENT_TIME
