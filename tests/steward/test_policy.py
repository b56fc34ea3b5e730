"""The Steward policy file: defaults, the embedded or referenced attestation policy, key errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from motte.steward.policy import DEV_POLICY, StewardPolicyError, load_steward_policy, read_steward_policy

HEX48 = "ab" * 48


def test_defaults_are_strict() -> None:
    policy = load_steward_policy("")
    assert policy.allow_unattested is False and policy.lifetime == timedelta(days=28) and policy.dns_names == ()
    assert policy.attestation.debug is False and policy.attestation.allow_any_measurement is False


def test_embedded_attestation_policy() -> None:
    policy = load_steward_policy(
        f'allow_unattested = true\nlifetime_days = 0.5\ndns_names = ["keep.example.com"]\n'
        f'[attestation]\ndebug = true\n[attestation.snp]\nmeasurements = ["{HEX48}"]\n'
    )
    assert policy.allow_unattested and policy.lifetime == timedelta(hours=12)
    assert policy.attestation.debug and policy.attestation.snp.measurements == (bytes.fromhex(HEX48),)


def test_referenced_attestation_policy_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "attest.toml").write_text(f'[snp]\nmeasurements = ["{HEX48}"]\n')
    (tmp_path / "steward.toml").write_text('attestation_policy = "attest.toml"\n')
    assert read_steward_policy(tmp_path / "steward.toml").attestation.snp.measurements == (bytes.fromhex(HEX48),)
    (tmp_path / "attest.toml").write_text("[snp]\nmeasurement = 1\n")
    with pytest.raises(StewardPolicyError, match=r"attest.toml: unknown policy key 'snp.measurement'"):
        read_steward_policy(tmp_path / "steward.toml")
    (tmp_path / "steward.toml").write_text('attestation_policy = "missing.toml"\n')
    with pytest.raises(StewardPolicyError, match="not found"):
        read_steward_policy(tmp_path / "steward.toml")


def test_workloads_and_launches_pin_digests() -> None:
    policy = load_steward_policy(f'workloads = ["{"AB" * 32}", "{"cd" * 32}"]\nlaunches = []\n')
    assert policy.workloads == {"ab" * 32, "cd" * 32}  # stored lower-case
    assert policy.launches == frozenset()  # set, and empty: no launch is allowed
    assert load_steward_policy("").workloads is None and load_steward_policy("").launches is None  # any


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('workloads = ["abc"]', "workloads: expected a list of SHA-256 digests"),
        (f'launches = ["{"g" * 64}"]', "launches: expected a list of SHA-256 digests"),
        (f'workloads = "{"ab" * 32}"', "workloads: expected a list"),
        ("launches = [1]", "launches: expected a list"),
        ("workload = []", "unknown key 'workload'"),
        ("allow_unatested = true", "unknown key 'allow_unatested'"),
        ('allow_unattested = "yes"', "allow_unattested: expected true or false"),
        ("lifetime_days = 0", "lifetime_days"),
        ("lifetime_days = 400", "lifetime_days"),
        ('dns_names = ["bad name!"]', "dns_names"),
        ("[attestation]\n[attestation.snp]\nmeasurement = 1", "unknown policy key 'attestation.snp.measurement'"),
        ('attestation_policy = "a.toml"\n[attestation]\ndebug = true', "not both"),
        ("attestation = 3", "attestation: expected a table"),
        ("not toml =", "not valid TOML"),
    ],
)
def test_mistakes_name_the_key(text: str, message: str) -> None:
    with pytest.raises(StewardPolicyError, match=message):
        load_steward_policy(text, base_dir=Path("."))


def test_the_dev_policy_issues_to_anything_and_says_so() -> None:
    policy = load_steward_policy(DEV_POLICY)
    assert policy.allow_unattested and policy.attestation.allow_any_measurement
    assert "prove nothing" in DEV_POLICY
