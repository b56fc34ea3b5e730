"""``motte attest verify``: exit status, JSON and table output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from motte.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["attest", "verify", *args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def snp_args(vectors: Path) -> list[str]:
    base = vectors / "snp" / "virtee-sev-milan-v2"
    return [
        "--evidence",
        str(base / "report_milan.hex"),
        "--certs",
        str(base / "vcek_milan.der"),
        "--certs",
        str(base / "cert_chain_milan"),
        "--now",
        "2025-12-06T00:00:00Z",
    ]


def write_policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


MILAN_MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"


def test_snp_accepted_with_a_pinning_policy(vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, f'[snp]\nmeasurements = ["{MILAN_MEASUREMENT}"]\n')
    code, out, _ = run(capsys, *snp_args(vectors), "--policy", policy)
    assert code == 0
    assert "verdict: accepted" in out and "Milan" in out


def test_snp_refused_by_the_default_policy_as_json(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *snp_args(vectors), "--json", "--kind", "snp")
    assert code == 1
    result = json.loads(out)
    assert result["verdict"] == "refused" and result["reason"] == "policy_measurement"
    assert result["claims"]["verified"] is True
    assert result["claims"]["measurements"]["measurement"] == MILAN_MEASUREMENT


def test_tampered_vcek_prints_claims_and_reason(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = vectors / "snp" / "trustee-milan-vcek"
    args = ["--evidence", str(base / "test-report.bin"), "--certs", str(base / "test-vcek-invalid-legacy.der")]
    code, out, _ = run(capsys, *args, "--now", "2024-01-01T00:00:00Z", "--json")
    assert code == 1
    result = json.loads(out)
    assert result["reason"] == "certificate_signature"
    assert result["claims"]["verified"] is False and result["claims"]["version"] == 2
    code, out, _ = run(capsys, *args, "--now", "2024-01-01T00:00:00Z")
    assert code == 1 and "certificate_signature" in out and "verdict: refused" in out


def test_expired_vlek(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = vectors / "snp" / "trustee-milan-vlek"
    code, out, _ = run(
        capsys,
        "--evidence",
        str(base / "test-vlek-report.bin"),
        "--certs",
        str(base / "test-vlek.der"),
        "--now",
        "2025-12-11T00:00:00Z",
        "--json",
    )
    assert code == 1 and json.loads(out)["reason"] == "certificate_expired"


def test_tdx_outdated_refused(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = vectors / "dcap" / "phala-tdx_outdated"
    code, out, _ = run(
        capsys,
        "--evidence",
        str(base / "tdx_quote_outdated"),
        "--collateral",
        str(base / "tdx_quote_outdated_collateral.json"),
        "--now",
        "2026-03-01T00:00:00Z",
        "--json",
    )
    assert code == 1 and json.loads(out)["reason"] == "tcb_no_match"


def test_sgx_accepted_when_the_policy_allows_its_status(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = vectors / "dcap" / "phala-sgx"
    mrenclave = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    policy = write_policy(
        tmp_path,
        f'[sgx]\nmrenclave = ["{mrenclave}"]\ntcb_statuses = ["ConfigurationAndSWHardeningNeeded"]\n'
        'advisories = ["INTEL-SA-00289", "INTEL-SA-00615"]\n',
    )
    args = ["--evidence", str(base / "sgx_quote"), "--collateral", str(base / "sgx_quote_collateral.json")]
    code, out, _ = run(capsys, *args, "--now", "2025-07-01T00:00:00Z", "--policy", policy, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["verdict"] == "accepted" and result["claims"]["tcb_status"] == "ConfigurationAndSWHardeningNeeded"


def test_nitro_base64_document(vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write_policy(tmp_path, "debug = true\nallow_any_measurement = true\n")
    doc = vectors / "nitro" / "eternis" / "test_verify_doc.b64"
    code, out, _ = run(capsys, "--evidence", str(doc), "--now", "2024-09-17T20:48:11Z", "--policy", policy)
    assert code == 0 and "NITRO evidence" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--evidence", "/nonexistent/report.bin"], "evidence file not found"),
        (["--evidence", "{evidence}", "--now", "yesterday"], "--now 'yesterday' is not an ISO 8601 time"),
        (["--evidence", "{garbage}"], "unknown_kind"),
        (["--evidence", "{evidence}", "--policy", "{bad_policy}"], "unknown policy key 'snp.measurment'"),
        (["--evidence", "{tdx}"], "need --collateral"),
        (["--evidence", "{evidence}", "--certs", "{garbage}"], "certificate input #1 is not a certificate"),
    ],
)
def test_bad_input_is_one_line(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 definitely not evidence")
    paths = {
        "evidence": str(vectors / "snp" / "trustee-milan-vcek" / "test-report.bin"),
        "garbage": str(garbage),
        "bad_policy": write_policy(tmp_path, "[snp]\nmeasurment = []\n"),
        "tdx": str(vectors / "dcap" / "phala-tdx" / "tdx_quote"),
    }
    code, out, err = run(capsys, *(a.format(**paths) for a in args))
    assert code == 125
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("motte: error: ") and message in err


def test_entry_point_subprocess(vectors: Path) -> None:
    base = vectors / "snp" / "trustee-genoa-e2e-v3"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "motte",
            "attest",
            "verify",
            "--evidence",
            str(base / "report_reconstructed.bin"),
            "--certs",
            str(base / "vcek.der"),
            "--now",
            "2025-07-01T00:00:00Z",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr  # verified, but the default policy pins no measurement
    assert json.loads(proc.stdout)["claims"]["product"] == "Genoa"
    assert "Traceback" not in proc.stderr
