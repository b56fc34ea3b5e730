"""The tenant policy: TOML loading (strict, errors name the key) and evaluation of verified claims."""

from __future__ import annotations

from pathlib import Path

import pytest

from motte.tenant.attest import Claims, Policy, PolicyError, Reason, evaluate, load_policy, verify_dcap, verify_snp
from tests.tenant.attest_forge import NOW, build_report, der, fake_amd, tcb_bytes
from tests.tenant.conftest import at


def test_defaults_are_strict() -> None:
    policy = load_policy("")
    assert policy == Policy()
    assert policy.debug is False and policy.allow_any_measurement is False
    assert policy.tdx.tcb_statuses == ("UpToDate",) and policy.sgx.advisories == ()
    assert policy.report_data is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("debgu = true", "'debgu'"),
        ("[snp]\nmeasurment = []", "'snp.measurment'"),
        ("[snp.min_tcb]\nfirmware = 1", "'snp.min_tcb.firmware'"),
        ('debug = "no"', "debug: expected true or false"),
        ('[snp]\nmeasurements = ["abc"]', "snp.measurements: "),
        ('[snp]\nmeasurements = ["00"]', "snp.measurements: each value must be 48 bytes"),
        ("[snp]\nmeasurements = 5", "snp.measurements: expected a list"),
        ("[snp]\nmin_tcb = { snp = 300 }", "snp.min_tcb.snp: expected an integer 0..255"),
        ('[snp]\nproducts = ["Rome"]', "snp.products: 'Rome' is not one of"),
        ("[snp]\nvmpls = [4]", "snp.vmpls"),
        ('[tdx]\ntcb_statuses = ["Revoked"]', "tdx.tcb_statuses: 'Revoked'"),
        ('[tdx]\nmin_tee_tcb_svn = "00"', "tdx.min_tee_tcb_svn"),
        ('[sgx]\nmrenclave = ["' + "00" * 48 + '"]', "sgx.mrenclave: each value must be 32 bytes"),
        ("[sgx]\nisv_prod_id = true", "sgx.isv_prod_id"),
        ('[nitro]\npcrs = { x = ["00"] }', "nitro.pcrs.x"),
        ('[nitro]\npcrs = { 0 = ["00"] }', "nitro.pcrs.0"),
        ('report_data = "' + "00" * 65 + '"', "report_data: at most 64 bytes"),
        ("snp = 1", "snp: expected a table"),
        ("debug = ", "not valid TOML"),
    ],
)
def test_errors_name_the_key(text: str, key: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(text)
    assert key in str(err.value)


MILAN_TCB = {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def snp_claims(**kwargs: object) -> Claims:
    fake = fake_amd("Milan")
    key, vcek = fake.vek(tcb=MILAN_TCB, hwid=bytes(range(64)))
    options: dict[str, object] = {"reported_tcb": tcb_bytes("Milan", MILAN_TCB), "chip_id": bytes(range(64))}
    options.update(kwargs)
    report = build_report(key, **options)  # type: ignore[arg-type]
    return verify_snp(report, certs=[der(vcek)], now=NOW, trust=fake.trust())


MEASUREMENT = (b"\x11" * 48).hex()
PIN = f'[snp]\nmeasurements = ["{MEASUREMENT}"]\n'


def reasons(claims: Claims, text: str, **kwargs: bytes) -> list[Reason]:
    return [v.reason for v in evaluate(claims, load_policy(text), **kwargs).violations]


def test_measurement_pinning() -> None:
    claims = snp_claims()
    assert reasons(claims, PIN) == []
    assert reasons(claims, "") == [Reason.POLICY_MEASUREMENT]
    assert reasons(claims, "allow_any_measurement = true") == []
    assert reasons(claims, f'[snp]\nmeasurements = ["{"ab" * 48}"]') == [Reason.POLICY_MEASUREMENT]


def test_debug_is_refused_by_default() -> None:
    claims = snp_claims(policy=0x30000 | 1 << 19)
    assert reasons(claims, PIN) == [Reason.POLICY_DEBUG]
    assert reasons(claims, "debug = true\n" + PIN) == []


def test_report_data_binding() -> None:
    claims = snp_claims(report_data=b"\x42" * 48 + bytes(16))
    assert reasons(claims, f'report_data = "{"42" * 48}"\n' + PIN) == []
    assert reasons(claims, f'report_data = "{"43" * 48}"\n' + PIN) == [Reason.POLICY_REPORT_DATA]
    assert reasons(claims, PIN, report_data=b"\x42" * 48) == []
    assert reasons(claims, PIN, report_data=b"\x42" * 64) == [Reason.POLICY_REPORT_DATA]


def test_minimum_tcb() -> None:
    claims = snp_claims()
    assert reasons(claims, PIN + "min_tcb = { bootloader = 3, snp = 8, microcode = 115 }") == []
    assert reasons(claims, PIN + "min_tcb = { snp = 9 }") == [Reason.POLICY_TCB]
    assert reasons(claims, PIN + "min_tcb = { fmc = 1 }") == []  # no FMC before Turin
    assert reasons(claims, PIN + "min_guest_svn = 8") == [Reason.POLICY_TCB]


def test_platform_rules() -> None:
    claims = snp_claims(vmpl=1)
    assert reasons(claims, PIN + 'products = ["Genoa"]') == [Reason.POLICY_PLATFORM]
    assert reasons(claims, PIN + 'signing_keys = ["VLEK"]') == [Reason.POLICY_PLATFORM]
    assert reasons(claims, PIN + "vmpls = [0]") == [Reason.POLICY_PLATFORM]
    assert reasons(claims, PIN + 'products = ["Milan"]\nvmpls = [0, 1]') == []


def test_id_key_digest_allow_list() -> None:
    claims = snp_claims()
    assert reasons(claims, PIN + f'id_key_digests = ["{"00" * 48}"]') == []
    assert reasons(claims, PIN + f'id_key_digests = ["{"01" * 48}"]') == [Reason.POLICY_SIGNER]


def test_unverified_claims_cannot_be_evaluated() -> None:
    with pytest.raises(ValueError):
        evaluate(Claims(technology="snp"), Policy())


def test_tdx_rules(vectors: Path) -> None:
    base = vectors / "dcap" / "phala-tdx"
    claims = verify_dcap(
        (base / "tdx_quote").read_bytes(),
        (base / "tdx_quote_collateral.json").read_bytes(),
        now=at("2025-07-01T00:00:00Z"),
    )
    mrtd = claims.measurements["mrtd"].hex()
    rtmr0 = claims.measurements["rtmr0"].hex()
    assert reasons(claims, f'[tdx]\nmrtd = ["{mrtd}"]\nrtmr0 = ["{rtmr0}"]') == []
    assert reasons(claims, f'[tdx]\nrtmr0 = ["{rtmr0}"]') == [Reason.POLICY_MEASUREMENT]  # MRTD unpinned
    assert reasons(claims, f'[tdx]\nmrtd = ["{mrtd}"]\nrtmr1 = ["{"00" * 48}"]') == [Reason.POLICY_MEASUREMENT]
    svn_ok = f'[tdx]\nmrtd = ["{mrtd}"]\nmin_tee_tcb_svn = "0601' + "00" * 14 + '"'
    svn_high = f'[tdx]\nmrtd = ["{mrtd}"]\nmin_tee_tcb_svn = "0701' + "00" * 14 + '"'
    assert reasons(claims, svn_ok) == []
    assert reasons(claims, svn_high) == [Reason.POLICY_TCB]


def test_sgx_signer_identity(vectors: Path) -> None:
    base = vectors / "dcap" / "phala-sgx"
    claims = verify_dcap(
        (base / "sgx_quote").read_bytes(),
        (base / "sgx_quote_collateral.json").read_bytes(),
        now=at("2025-07-01T00:00:00Z"),
    )
    allow = '\ntcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\nadvisories = ["INTEL-SA-00289", "INTEL-SA-00615"]'
    signer = claims.signer["mrsigner"].hex()
    assert reasons(claims, f'[sgx]\nmrsigner = ["{signer}"]\nisv_prod_id = 0' + allow) == []
    assert reasons(claims, f'[sgx]\nmrsigner = ["{signer}"]' + allow) == [Reason.POLICY_MEASUREMENT]
    assert reasons(claims, f'[sgx]\nmrsigner = ["{signer}"]\nisv_prod_id = 1' + allow) == [Reason.POLICY_SIGNER]
    assert reasons(claims, f'[sgx]\nmrsigner = ["{signer}"]\nisv_prod_id = 0\nmin_isv_svn = 1' + allow) == [
        Reason.POLICY_TCB
    ]
