"""The Steward's judgement of one request (pure): every way a CSR or its evidence can be wrong gets
its status and reason; the SNP path runs on test-only AMD keys, the TDX path on a real quote."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from motte.keep.csr import build_csr, certificate_request, generate_key, report_data
from motte.keep.evidence import Evidence, NoEvidence
from motte.keep.evidence.encoding import encode_dcap_evidence, encode_snp_evidence
from motte.keep.evidence.snp import SnpEvidenceSource
from motte.shared.binding import KeepClaims
from motte.shared.errors import MotteError
from motte.shared.steward_certs import read_attestation, spki_der
from motte.shared.steward_protocol import decode_snp_evidence, key_binding
from motte.steward.check import Refused, check_request
from motte.steward.issuer import CertificateAuthority
from motte.steward.policy import StewardPolicy, load_steward_policy
from motte.tenant.attest.canonical import canonical_evidence
from tests.steward.conftest import ALLOW_KVM
from tests.steward.fakes import DEBUG_POLICY, MEASUREMENT, VCEK_GUID, FakeSnp, FakeTsmKernel, cert_table
from tests.tenant.attest_forge import NOW

STRICT = StewardPolicy()
PINNED = load_steward_policy(f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')


@pytest.fixture(scope="module")
def platform() -> FakeSnp:
    return FakeSnp.make()


def refused(csr: bytes, policy: StewardPolicy = ALLOW_KVM, **kwargs: object) -> Refused:
    with pytest.raises(Refused) as err:
        check_request(csr, policy=policy, now=kwargs.pop("now", NOW), **kwargs)  # type: ignore[arg-type]
    return err.value


def make_csr(
    key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[str, bytes, bool]],
    *,
    subject: x509.Name | None = None,
    attribute: bool = False,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    for oid, value, critical in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical)
    if attribute:
        builder = builder.add_attribute(x509.oid.AttributeOID.CHALLENGE_PASSWORD, b"secret")
    hash_ = hashes.SHA384() if isinstance(key.curve, ec.SECP384R1) else hashes.SHA256()
    return builder.sign(key, hash_).public_bytes(Encoding.DER)


KVM = "1.3.6.1.4.1.58270.1.1"


def snp_csr(
    platform: FakeSnp,
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    binding_key: ec.EllipticCurvePrivateKey | None = None,
    policy: int = 0x30000,
) -> bytes:
    """A CSR for ``key`` whose SNP report binds ``binding_key`` (the same key unless given)."""
    key = key or generate_key("snp")
    bound = binding_key or key
    report = platform.report(key_binding(spki_der(bound.public_key()), "snp"), policy=policy)
    return build_csr(key, Evidence("snp", encode_snp_evidence(platform.vcek, [], report)))


# --- the CSR -----------------------------------------------------------------------------------------
def test_kvm_is_refused_with_401_unless_the_policy_allows_it() -> None:
    csr = certificate_request(NoEvidence()).csr
    err = refused(csr, STRICT)
    assert (err.status, err.reason, err.technology) == (401, "unattested_refused", "none")
    attested = check_request(csr, policy=ALLOW_KVM, now=NOW)
    assert (attested.technology, attested.measurement, attested.claims) == ("none", None, None)
    assert attested.evidence_sha256 == hashlib.sha256(b"").hexdigest()


def test_malformed_and_badly_signed_csrs_get_400() -> None:
    csr = certificate_request(NoEvidence()).csr
    for bad in (b"", b"not DER at all", csr[:-5], csr + b"\0"):
        assert (refused(bad).status, refused(bad).reason) == (400, "malformed_csr")
    tampered = bytearray(csr)
    tampered[-10] ^= 0x01  # inside the signature
    assert (refused(bytes(tampered)).status, refused(bytes(tampered)).reason) == (400, "csr_signature")


def test_csr_shape_rules() -> None:
    key = generate_key("kvm")
    named = make_csr(key, [(KVM, b"", False)], subject=x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")]))
    assert refused(named).reason == "csr_subject"
    assert refused(make_csr(key, [])).status == 401 and refused(make_csr(key, [])).reason == "no_evidence"
    two = make_csr(key, [(KVM, b"", False), ("1.3.6.1.4.1.58270.1.4", b"", False)])
    assert refused(two).reason == "csr_attributes"
    assert refused(make_csr(key, [(KVM, b"", False)], attribute=True)).reason == "csr_attributes"
    assert refused(make_csr(key, [(KVM, b"", True)])).reason == "malformed_evidence"
    assert refused(make_csr(key, [(KVM, b"\x05\x00", False)])).reason == "malformed_evidence"
    unknown = refused(make_csr(key, [("1.3.6.1.4.1.58270.1.9", b"", False)]))
    assert (unknown.status, unknown.reason) == (400, "unsupported_evidence")


def test_the_key_type_must_be_the_technology_s() -> None:
    assert refused(make_csr(generate_key("snp"), [(KVM, b"", False)])).reason == "key_type"
    wrong = make_csr(generate_key("kvm"), [("1.3.6.1.4.1.58270.1.3", b"\x30\x00", False)])
    assert refused(wrong, PINNED).reason == "key_type"


# --- SNP evidence ------------------------------------------------------------------------------------
def test_snp_evidence_bound_to_the_key_is_attested(platform: FakeSnp) -> None:
    attested = check_request(snp_csr(platform), policy=PINNED, now=NOW, amd_trust=platform.trust())
    assert attested.technology == "snp" and attested.measurement == MEASUREMENT
    assert attested.claims is not None and attested.claims["product"] == "Milan"
    certified = attested.certified_claims()
    assert certified["measurements"]["measurement"] == MEASUREMENT.hex() and "platform_id" not in certified


def test_snp_through_the_keep_s_own_evidence_source(platform: FakeSnp, tmp_path: Path) -> None:
    root = tmp_path / "tsm"
    root.mkdir()
    kernel = FakeTsmKernel("sev_guest", platform.report, auxblob=cert_table({VCEK_GUID: platform.vcek}))
    request = certificate_request(SnpEvidenceSource(tsm_root=root, tsm_files=kernel))
    attested = check_request(request.csr, policy=PINNED, now=NOW, amd_trust=platform.trust())
    assert attested.spki == spki_der(request.key.public_key())


def test_snp_refusals(platform: FakeSnp) -> None:
    trust = platform.trust()
    # AMD's real roots do not know the test-only VCEK
    assert refused(snp_csr(platform), PINNED).reason == "certificate_signature"
    # evidence for another key (a report bound to a different key, e.g. replayed)
    other = refused(snp_csr(platform, binding_key=generate_key("snp")), PINNED, amd_trust=trust)
    assert (other.status, other.reason) == (400, "policy_report_data") and other.claims is not None
    # a debug keep
    assert refused(snp_csr(platform, policy=DEBUG_POLICY), PINNED, amd_trust=trust).reason == "policy_debug"
    # the strict default policy pins no measurement
    assert refused(snp_csr(platform), STRICT, amd_trust=trust).reason == "policy_measurement"
    # evidence that is not SnpEvidence DER
    key = generate_key("snp")
    junk = refused(build_csr(key, Evidence("snp", b"\x30\x03\x04\x01\x00")), PINNED, amd_trust=trust)
    assert junk.reason == "malformed_evidence"
    # a tampered report
    report = bytearray(platform.report(key_binding(spki_der(key.public_key()), "snp")))
    report[0x90] ^= 1
    tampered = build_csr(key, Evidence("snp", encode_snp_evidence(platform.vcek, [], bytes(report))))
    assert refused(tampered, PINNED, amd_trust=trust).reason == "evidence_signature"


def test_replayed_evidence_in_a_csr_for_another_key_is_refused(platform: FakeSnp) -> None:
    victim = generate_key("snp")
    good = snp_csr(platform, victim)
    check_request(good, policy=PINNED, now=NOW, amd_trust=platform.trust())
    evidence = x509.load_der_x509_csr(good).extensions[0].value.value  # type: ignore[attr-defined]
    replay = build_csr(generate_key("snp"), Evidence("snp", evidence))
    err = refused(replay, PINNED, amd_trust=platform.trust())
    report = canonical_evidence(decode_snp_evidence(evidence).report, "snp")  # the log's key: the report, not the DER
    assert err.reason == "policy_report_data" and err.evidence_sha256 == hashlib.sha256(report).hexdigest()


def test_issued_certificates_say_what_was_attested(platform: FakeSnp, ca: CertificateAuthority) -> None:
    attested = check_request(snp_csr(platform), policy=PINNED, now=NOW, amd_trust=platform.trust())
    now = datetime.now(UTC).replace(microsecond=0)
    cert = ca.issue(attested, now=now, lifetime=PINNED.lifetime, dns_names=("keep.example",))
    cert.verify_directly_issued_by(ca.cert)
    assert cert.not_valid_after_utc - now == PINNED.lifetime
    with pytest.raises(MotteError, match="not valid yet"):
        ca.issue(attested, now=ca.cert.not_valid_before_utc - timedelta(days=1), lifetime=PINNED.lifetime)
    att = read_attestation(cert)
    assert (att.technology, att.measurement, att.attested) == ("snp", MEASUREMENT, True)
    assert att.evidence_sha256 == bytes.fromhex(attested.evidence_sha256)
    assert att.claims["product"] == "Milan" and att.claims["debug"] is False
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["keep.example"]
    unattested = check_request(certificate_request(NoEvidence()).csr, policy=ALLOW_KVM, now=NOW)
    att = read_attestation(ca.issue(unattested, now=now, lifetime=ALLOW_KVM.lifetime))
    assert (att.technology, att.attested, att.claims) == ("none", False, {"attested": False})


# --- the binding extensions: the workload and launch the keep was given ------------------------------
WORKLOAD_A, WORKLOAD_B = hashlib.sha256(b"workload A").digest(), hashlib.sha256(b"workload B").digest()
LAUNCH = hashlib.sha256(b"launch").digest()
BINDING_ARC = "1.3.6.1.4.1.58270.3."
CLAIMS_A = KeepClaims(WORKLOAD_A, LAUNCH, (("steward", hashlib.sha256(b"pem").digest()),))


def bound_snp_csr(platform: FakeSnp, evidence_claims: KeepClaims | None, csr_claims: KeepClaims | None) -> bytes:
    """A CSR carrying ``csr_claims`` whose SNP report binds its key and ``evidence_claims``."""
    key = generate_key("snp")
    report = platform.report(report_data(key, "snp", evidence_claims))
    return build_csr(key, Evidence("snp", encode_snp_evidence(platform.vcek, [], report)), csr_claims)


def pinning(**lists: list[str]) -> StewardPolicy:
    pins = "".join(f"{key} = {values!r}\n".replace("'", '"') for key, values in lists.items())
    return load_steward_policy(pins + f'[attestation.snp]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')


def test_snp_evidence_binding_the_claims_is_attested_and_they_reach_the_certificate(
    platform: FakeSnp, ca: CertificateAuthority
) -> None:
    csr = bound_snp_csr(platform, CLAIMS_A, CLAIMS_A)
    attested = check_request(csr, policy=PINNED, now=NOW, amd_trust=platform.trust())
    assert attested.keep_claims == CLAIMS_A and attested.measurement == MEASUREMENT
    cert = ca.issue(attested, now=datetime.now(UTC), lifetime=PINNED.lifetime)
    requested = [e for e in x509.load_der_x509_csr(csr).extensions if e.oid.dotted_string.startswith(BINDING_ARC)]
    issued = [e for e in cert.extensions if e.oid.dotted_string.startswith(BINDING_ARC)]
    assert len(requested) == 3 and [(e.oid, e.critical, e.value) for e in issued] == [
        (e.oid, e.critical, e.value) for e in requested
    ]  # verbatim: same OIDs, same DER values, non-critical
    assert read_attestation(cert).keep_claims == CLAIMS_A


def test_claims_changed_after_the_evidence_was_made_are_refused(platform: FakeSnp) -> None:
    trust = platform.trust()
    swapped = CLAIMS_A._replace(workload_sha256=WORKLOAD_B)
    for evidence_claims, csr_claims in ((CLAIMS_A, swapped), (CLAIMS_A, None), (None, CLAIMS_A),
                                        (CLAIMS_A, CLAIMS_A._replace(trust_anchors=()))):
        err = refused(bound_snp_csr(platform, evidence_claims, csr_claims), PINNED, amd_trust=trust)
        assert (err.status, err.reason) == (400, "policy_report_data"), (evidence_claims, csr_claims)
        assert err.keep_claims == csr_claims  # the log records what the CSR claimed


def test_the_policy_pins_workloads_and_launches(platform: FakeSnp) -> None:
    trust = platform.trust()
    csr_a = bound_snp_csr(platform, CLAIMS_A, CLAIMS_A)
    claims_b = CLAIMS_A._replace(workload_sha256=WORKLOAD_B)
    csr_b = bound_snp_csr(platform, claims_b, claims_b)
    only_a = pinning(workloads=[WORKLOAD_A.hex().upper()])  # either case
    assert check_request(csr_a, policy=only_a, now=NOW, amd_trust=trust).keep_claims == CLAIMS_A
    err = refused(csr_b, only_a, amd_trust=trust)
    assert (err.status, err.reason, err.technology) == (400, "workload_not_allowed", "snp")
    assert WORKLOAD_B.hex() in err.message and err.claims is not None and err.keep_claims is not None
    assert refused(bound_snp_csr(platform, None, None), only_a, amd_trust=trust).reason == "workload_not_allowed"
    assert refused(csr_a, pinning(workloads=[]), amd_trust=trust).reason == "workload_not_allowed"
    assert check_request(csr_a, policy=pinning(launches=[LAUNCH.hex()]), now=NOW, amd_trust=trust)
    err = refused(csr_a, pinning(workloads=[WORKLOAD_A.hex()], launches=["00" * 32]), amd_trust=trust)
    assert (err.reason, LAUNCH.hex() in err.message) == ("launch_not_allowed", True)
    # a pinned workload in a keep of another measurement is still refused
    pins = f'workloads = ["{WORKLOAD_A.hex()}"]\n[attestation.snp]\nmeasurements = ["{"cd" * 48}"]\n'
    other = load_steward_policy(pins)
    assert refused(csr_a, other, amd_trust=trust).reason == "policy_measurement"


def test_an_unattested_keep_s_claims_are_its_word_only(ca: CertificateAuthority) -> None:
    request = certificate_request(NoEvidence(), claims=CLAIMS_A)
    attested = check_request(request.csr, policy=ALLOW_KVM, now=NOW)
    assert (attested.technology, attested.keep_claims) == ("none", CLAIMS_A)
    att = read_attestation(ca.issue(attested, now=datetime.now(UTC), lifetime=ALLOW_KVM.lifetime))
    assert (att.technology, att.attested, att.keep_claims) == ("none", False, CLAIMS_A)
    pinned = load_steward_policy(f'allow_unattested = true\nworkloads = ["{WORKLOAD_B.hex()}"]\n')
    err = refused(request.csr, pinned)
    assert (err.reason, err.technology, err.keep_claims) == ("workload_not_allowed", "none", CLAIMS_A)
    assert refused(request.csr, STRICT).keep_claims == CLAIMS_A  # 401 unattested_refused, claims logged


def test_binding_extension_shape_rules() -> None:
    key = generate_key("kvm")
    (workload, launch, anchors) = [(oid, value, False) for oid, value in CLAIMS_A.extensions()]
    evidence = (KVM, b"", False)

    def reason(extensions: list[tuple[str, bytes, bool]]) -> tuple[int, str]:
        err = refused(make_csr(key, extensions))
        return err.status, err.reason

    assert check_request(make_csr(key, [evidence, workload, launch]), policy=ALLOW_KVM, now=NOW).keep_claims
    assert reason([workload, launch]) == (401, "no_evidence")  # binding extensions, no evidence
    assert reason([workload, evidence, launch]) == (400, "csr_attributes")  # the evidence comes first
    assert reason([evidence, workload, (launch[0], launch[1], True)]) == (400, "csr_attributes")  # critical
    assert reason([evidence, workload, launch, ("1.3.6.1.4.1.58270.3.5", b"\x04\x00", False)]) == (
        400, "csr_attributes")  # not a claim this Steward knows
    assert reason([evidence, workload, launch, ("2.5.29.17", b"\x30\x00", False)]) == (400, "csr_attributes")
    assert reason([evidence, launch, workload]) == (400, "malformed_csr")  # out of OID order
    assert reason([evidence, workload]) == (400, "malformed_csr")  # no launch digest
    assert reason([evidence, workload, launch, (anchors[0], b"\x30\x00", False)]) == (400, "malformed_csr")
    assert reason([evidence, (workload[0], b"\x04\x01\x00", False), launch]) == (400, "malformed_csr")


# --- TDX evidence, on the real quote -----------------------------------------------------------------
def test_a_real_tdx_quote_is_verified_and_refused_for_not_binding_the_key(vectors: Path) -> None:
    base = vectors / "dcap" / "phala-tdx"
    quote, collateral = (base / "tdx_quote").read_bytes(), (base / "tdx_quote_collateral.json").read_text()
    csr = build_csr(generate_key("tdx"), Evidence("tdx", encode_dcap_evidence(quote, collateral)))
    policy = load_steward_policy("[attestation]\nallow_any_measurement = true\n")
    err = refused(csr, policy, now=datetime(2025, 7, 1, tzinfo=UTC))
    assert err.reason == "policy_report_data" and err.claims is not None and err.claims["tcb_status"] == "UpToDate"
    without = build_csr(generate_key("tdx"), Evidence("tdx", encode_dcap_evidence(quote)))
    assert refused(without, policy).reason == "collateral_invalid"


@pytest.fixture(scope="session")
def vectors() -> Path:
    from tests.tenant.conftest import VECTORS

    return VECTORS
