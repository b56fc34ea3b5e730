"""Attestation verification throughput on one core, over the real vectors.

    .venv/bin/python bench/bench_attest.py [--seconds 2]

SNP: report parse + VEK <- ASK <- ARK chain + ECDSA P-384 report signature + TCB/hwID checks, with
the roots' checks (ARK self-signature, ASK/ASVK <- ARK) cached as in a long-running verifier; the
VCEK link and the report signature are checked on every call. Target: >= 500 verifications/s.
DCAP: a full TDX quote verification with the collateral already parsed (and, separately, parsed
per call). Target: <= 10 ms per quote. Each figure is printed with the bare cryptographic
operation it is built on, measured in the same run, as the baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VECTORS = ROOT / "tests" / "vectors"
SNP_TARGET_PER_S = 500.0
DCAP_TARGET_MS = 10.0


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls per second over about ``seconds`` (after a short warm-up)."""
    for _ in range(5):
        fn()
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            fn()
        count += 20
    return count / (time.perf_counter() - started), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = parser.parse_args()
    if not VECTORS.is_dir():
        sys.exit(f"vectors not found at {VECTORS}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, stated not assumed

    import dcap_qvl
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from motte.tenant.attest import verify_dcap, verify_snp
    from motte.tenant.attest.amd_roots import builtin_amd_trust, pss_signed_by
    from motte.tenant.attest.dcap import intel_root_der, load_collateral
    from motte.tenant.attest.snp import parse_report

    cpu = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"python {sys.version.split()[0]}, pinned to CPU {cpu}, {args.seconds:.1f} s per figure")
    builtin_amd_trust()  # the roots' checks, once per process

    snp_dir = VECTORS / "snp"
    cases = {
        "Milan VCEK (v2)": (
            bytes.fromhex((snp_dir / "virtee-sev-milan-v2" / "report_milan.hex").read_text().strip()),
            (snp_dir / "virtee-sev-milan-v2" / "vcek_milan.der").read_bytes(),
        ),
        "Genoa VCEK (v3)": (
            (snp_dir / "trustee-genoa-e2e-v3" / "report_reconstructed.bin").read_bytes(),
            (snp_dir / "trustee-genoa-e2e-v3" / "vcek.der").read_bytes(),
        ),
        "Milan VLEK (v3)": (
            (snp_dir / "trustee-milan-vlek" / "test-vlek-report.bin").read_bytes(),
            (snp_dir / "trustee-milan-vlek" / "test-vlek.der").read_bytes(),
        ),
    }
    now = datetime(2025, 7, 1, tzinfo=UTC)
    print("\nAMD SEV-SNP: report + chain verification (roots' checks cached)")

    def snp_once(report: bytes, vek: bytes) -> Callable[[], object]:
        return lambda: verify_snp(report, certs=[vek], now=now)

    for label, (report_bytes, vek_bytes) in cases.items():
        per_s, n = rate(snp_once(report_bytes, vek_bytes), args.seconds)
        print(
            f"  {label:17s} {per_s:8.0f} /s  {1000 / per_s:6.3f} ms  ({n} runs)  "
            f"{per_s / SNP_TARGET_PER_S:5.2f}x the {SNP_TARGET_PER_S:.0f}/s target"
        )

    # Baseline: the two public-key operations every SNP verification must do.
    report, vek_der = cases["Milan VCEK (v2)"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD VCEKs have serial number 0
        vek = x509.load_der_x509_certificate(vek_der)
    key = vek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    parsed = parse_report(report)
    signature = encode_dss_signature(parsed.sig_r, parsed.sig_s)
    ask = builtin_amd_trust().products["Milan"].ask

    def crypto_only() -> None:
        key.verify(signature, parsed.signed_bytes, ec.ECDSA(hashes.SHA384()))
        assert pss_signed_by(vek, ask)

    base, _ = rate(crypto_only, args.seconds)
    full, _ = rate(lambda: verify_snp(report, certs=[vek_der], now=now), args.seconds)
    print(
        f"  baseline: ECDSA P-384 + RSA-4096 PSS verify alone {base:8.0f} /s; "
        f"full verification runs at {full / base:.2f}x of it"
    )

    print("\nIntel TDX quote v4 (dcap-qvl, built-in Intel root)")
    tdx = VECTORS / "dcap" / "phala-tdx"
    quote = (tdx / "tdx_quote").read_bytes()
    text = (tdx / "tdx_quote_collateral.json").read_bytes()
    collateral = load_collateral(text)
    tdx_now = datetime(2025, 7, 1, tzinfo=UTC)
    root = intel_root_der()
    now_secs = int(tdx_now.timestamp())
    figures = {
        "collateral parsed once": lambda: verify_dcap(quote, collateral, now=tdx_now),
        "collateral JSON per call": lambda: verify_dcap(quote, text, now=tdx_now),
        "baseline: dcap-qvl alone": lambda: dcap_qvl.verify_with_root_ca(quote, collateral, root, now_secs),
    }
    measured: dict[str, float] = {}
    for label, fn in figures.items():
        per_s, n = rate(fn, args.seconds)
        ms = 1000 / per_s
        measured[label] = ms
        target = (
            f"{DCAP_TARGET_MS / ms:5.1f}x under the {DCAP_TARGET_MS:.0f} ms target" if "baseline" not in label else ""
        )
        print(f"  {label:26s} {ms:7.3f} ms/quote  {per_s:7.0f} /s  ({n} runs)  {target}")
    overhead = measured["collateral parsed once"] / measured["baseline: dcap-qvl alone"]
    print(f"  motte's parsing and strictness checks cost {overhead:.2f}x dcap-qvl alone")


if __name__ == "__main__":
    main()
