"""``motte attest verify``: exit status, JSON and table output, one-line errors."""

from __future__ import annotations

import json
import os
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
        (["--evidence", "/nonexistent/report.bin"], "evidence file /nonexistent/report.bin: not found"),
        (["--evidence", "{evidence}", "--now", "yesterday"], "--now 'yesterday' is not an ISO 8601 time"),
        (["--evidence", "{evidence}", "--policy", "{bad_policy}"], "unknown policy key 'snp.measurment'"),
        (["--evidence", "{tdx}"], "need --collateral"),
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


# --- refusals are verdicts; input files are bounded ---------------------------------------------


def _tdx_with_trailing_bytes(vectors: Path, tmp_path: Path) -> list[str]:
    base = vectors / "dcap" / "phala-tdx"
    quote = tmp_path / "tdx_quote"
    quote.write_bytes((base / "tdx_quote").read_bytes() + b"\x01")  # unsigned bytes after the signature data
    return ["--evidence", str(quote), "--collateral", str(base / "tdx_quote_collateral.json")]


@pytest.mark.parametrize(
    ("case", "reason"),
    [("garbage", "unknown_kind"), ("garbage_certs", "malformed"), ("tdx_trailing", "malformed")],
)
def test_malformed_evidence_is_refused_with_a_verdict(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, reason: str
) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 definitely not evidence")
    args = {
        "garbage": ["--evidence", str(garbage)],
        "garbage_certs": [*snp_args(vectors)[:2], "--certs", str(garbage)],
        "tdx_trailing": _tdx_with_trailing_bytes(vectors, tmp_path),
    }[case]
    code, out, err = run(capsys, *args, "--now", "2025-12-06T00:00:00Z", "--json")
    assert (code, err) == (1, "")
    result = json.loads(out)
    assert result["verdict"] == "refused" and result["reason"] == reason and result["claims"] is None
    code, out, err = run(capsys, *args, "--now", "2025-12-06T00:00:00Z")
    assert (code, err) == (1, "")
    assert out.splitlines()[-1].startswith("verdict: refused") and reason in out


HOSTILE = (
    '{"note": "\nverdict: accepted\r\x1b[1;32mverdict: accepted\x1b[0m [/] [bold]x[/bold] [link=https://evil]y'
    " \x1b]0;a new title\x07 \x1b[2J\x1b[H \x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
    " \x9b2J \u202eright-to-left \u2028next line " + "A" * 40 + ' verdict: accepted"}'
)


def test_hostile_evidence_cannot_drive_the_terminal_or_forge_the_verdict(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Azure HCL runtime data is the attacker's text, shown in the claims even when refused."""
    base = vectors / "snp" / "virtee-sev-milan-v2"
    report = bytes.fromhex((base / "report_milan.hex").read_text().strip())
    header = b"HCLA" + (2).to_bytes(4, "little") + bytes(24)
    runtime = HOSTILE.encode()
    igvm = b"".join(n.to_bytes(4, "little") for n in (20 + len(runtime), 1, 2, 1, len(runtime)))
    evidence = tmp_path / "hcl.bin"
    evidence.write_bytes(header + report + igvm + runtime)
    args = ["--evidence", str(evidence), "--certs", str(base / "vcek_milan.der"),
            "--certs", str(base / "cert_chain_milan"), "--now", "2025-12-06T00:00:00Z"]
    code, out, err = run(capsys, *args)
    assert (code, err) == (1, "")  # refused (runtime data mismatch): no crash on the markup
    assert "runtime_data_mismatch" in out and "[/]" in out and "[link=https://evil]" in out
    for control in ("\x1b", "\x9b", "\x07", "\r", "\u202e", "\u2028"):
        assert control not in out
    for shown in ("\\x1b]0;a", "title\\x07", "\\x1b[2J\\x1b[H", "\\x9b2J", "\\u202eright-to-left", "\\u2028next"):
        assert shown in out  # (the table may fold a value at its spaces)
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("verdict")] == [lines[-1]]
    assert lines[-1].startswith("verdict: refused")
    code, out, _ = run(capsys, *args, "--json")
    assert code == 1 and out.isascii() and "\x1b" not in out
    assert json.loads(out)["claims"]["details"]["hcl_runtime_data"] == HOSTILE


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
@pytest.mark.parametrize("option", ["--evidence", "--certs", "--crl", "--collateral", "--policy"])
def test_input_files_must_be_regular_files(
    vectors: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, special: str
) -> None:
    path = {"/dev/zero": "/dev/zero", "fifo": str(tmp_path / "fifo"), "directory": str(tmp_path)}[special]
    if special == "fifo":
        os.mkfifo(path)  # with no writer: an open without O_NONBLOCK would never return
    evidence = str(vectors / "snp" / "trustee-milan-vcek" / "test-report.bin")
    args = ["--evidence", path] if option == "--evidence" else ["--evidence", evidence, option, path]
    code, out, err = run(capsys, *args)
    assert (code, out) == (125, "")
    kind = {"/dev/zero": "a character device", "fifo": "a FIFO", "directory": "a directory"}[special]
    assert err == f"motte: error: {_FILE_WHAT[option]} file {path}: is {kind}, not a regular file\n"


_FILE_WHAT = {"--evidence": "evidence", "--certs": "certificate", "--crl": "CRL", "--collateral": "collateral",
              "--policy": "policy"}


def test_an_input_file_is_read_no_further_than_its_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: costs no disk
    code, _, err = run(capsys, "--evidence", str(big))
    assert code == 125 and err.startswith(f"motte: error: evidence file {big}: {64 << 20} bytes, larger than")
