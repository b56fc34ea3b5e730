"""The tenant's attestation policy: a TOML file, strict by default, applied to verified claims.

Defaults refuse: debug keeps, any DCAP TCB status but ``UpToDate``, any advisory, and evidence
whose measurement the policy does not pin (set ``allow_any_measurement = true`` to only inspect).
Every key is checked; an unknown key or a wrong type is an error that names the key.

Example::

    debug = false
    report_data = "<hex, up to 64 bytes; zero-padded>"   # required binding (optional key)

    [snp]
    measurements = ["<96 hex chars>"]
    id_key_digests = ["<96 hex chars>"]
    author_key_digests = ["<96 hex chars>"]
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }   # fmc too, on Turin
    min_guest_svn = 0
    products = ["Milan", "Genoa", "Turin"]
    signing_keys = ["VCEK", "VLEK"]
    vmpls = [0]

    [tdx]
    mrtd = ["<96 hex>"]
    rtmr0 = ["<96 hex>"]          # rtmr1..rtmr3, mrseam, mrconfigid, mrowner likewise
    min_tee_tcb_svn = "<32 hex>"  # compared byte by byte
    tcb_statuses = ["UpToDate"]
    advisories = []

    [sgx]
    mrenclave = ["<64 hex>"]
    mrsigner = ["<64 hex>"]
    isv_prod_id = 0
    min_isv_svn = 0
    tcb_statuses = ["UpToDate"]
    advisories = []

    [nitro]
    pcrs = { 0 = ["<96 hex>"], 8 = ["<96 hex>"] }
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from motte.tenant.attest.claims import Claims, Reason

KNOWN_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
SNP_TCB_NAMES = ("bootloader", "tee", "snp", "microcode", "fmc")
TDX_MEASUREMENTS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "mrconfigid", "mrowner", "mrownerconfig")


class PolicyError(ValueError):
    """The policy file is wrong; the message names the key."""


@dataclass(frozen=True)
class SnpPolicy:
    measurements: tuple[bytes, ...] = ()
    id_key_digests: tuple[bytes, ...] = ()
    author_key_digests: tuple[bytes, ...] = ()
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    min_guest_svn: int = 0
    products: tuple[str, ...] = ()  # empty: any product line
    signing_keys: tuple[str, ...] = ("VCEK", "VLEK")
    vmpls: tuple[int, ...] = ()  # empty: any VMPL


@dataclass(frozen=True)
class TdxPolicy:
    measurements: Mapping[str, tuple[bytes, ...]] = field(default_factory=dict)  # name -> allowed
    min_tee_tcb_svn: bytes | None = None
    tcb_statuses: tuple[str, ...] = ("UpToDate",)
    advisories: tuple[str, ...] = ()


@dataclass(frozen=True)
class SgxPolicy:
    mrenclave: tuple[bytes, ...] = ()
    mrsigner: tuple[bytes, ...] = ()
    isv_prod_id: int | None = None
    min_isv_svn: int = 0
    tcb_statuses: tuple[str, ...] = ("UpToDate",)
    advisories: tuple[str, ...] = ()


@dataclass(frozen=True)
class NitroPolicy:
    pcrs: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    debug: bool = False
    allow_any_measurement: bool = False
    report_data: bytes | None = None
    snp: SnpPolicy = field(default_factory=SnpPolicy)
    tdx: TdxPolicy = field(default_factory=TdxPolicy)
    sgx: SgxPolicy = field(default_factory=SgxPolicy)
    nitro: NitroPolicy = field(default_factory=NitroPolicy)


# --- loading ------------------------------------------------------------------------------------
def load_policy(text: str) -> Policy:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise PolicyError("policy is not valid TOML: arrays or tables nested too deeply") from None
    return policy_from_table(data)


def policy_from_table(data: Any, path: str = "") -> Policy:
    """The policy from an already-parsed TOML table, e.g. one embedded in a Steward policy file;
    ``path`` (e.g. ``"attestation"``) prefixes the key names in error messages."""
    top = _Table(data, path)
    policy = Policy(
        debug=top.flag("debug", False),
        allow_any_measurement=top.flag("allow_any_measurement", False),
        report_data=top.hexbytes("report_data", max_size=64),
        snp=_snp(top.table("snp")),
        tdx=_tdx(top.table("tdx")),
        sgx=_sgx(top.table("sgx")),
        nitro=_nitro(top.table("nitro")),
    )
    top.done()
    return policy


def _snp(t: _Table) -> SnpPolicy:
    tcb = t.table("min_tcb")
    min_tcb = {name: v for name in SNP_TCB_NAMES if (v := tcb.integer(name, None, 0, 255)) is not None}
    tcb.done()
    p = SnpPolicy(
        measurements=t.hexes("measurements", 48),
        id_key_digests=t.hexes("id_key_digests", 48),
        author_key_digests=t.hexes("author_key_digests", 48),
        min_tcb=min_tcb,
        min_guest_svn=t.integer("min_guest_svn", 0, 0, 2**32 - 1) or 0,
        products=t.strings("products", (), ("Milan", "Genoa", "Turin")),
        signing_keys=t.strings("signing_keys", ("VCEK", "VLEK"), ("VCEK", "VLEK")),
        vmpls=tuple(t.integers("vmpls", 0, 3)),
    )
    t.done()
    return p


def _statuses(t: _Table) -> tuple[str, ...]:
    statuses = t.strings("tcb_statuses", ("UpToDate",), KNOWN_STATUSES)
    return statuses


def _tdx(t: _Table) -> TdxPolicy:
    measurements = {name: v for name in TDX_MEASUREMENTS if (v := t.hexes(name, 48))}
    svn = t.hexbytes("min_tee_tcb_svn", max_size=16)
    if svn is not None and len(svn) != 16:
        raise PolicyError(f"{t.key('min_tee_tcb_svn')}: expected 16 bytes of hex")
    p = TdxPolicy(measurements, svn, _statuses(t), t.strings("advisories", ()))
    t.done()
    return p


def _sgx(t: _Table) -> SgxPolicy:
    p = SgxPolicy(
        mrenclave=t.hexes("mrenclave", 32),
        mrsigner=t.hexes("mrsigner", 32),
        isv_prod_id=t.integer("isv_prod_id", None, 0, 0xFFFF),
        min_isv_svn=t.integer("min_isv_svn", 0, 0, 0xFFFF) or 0,
        tcb_statuses=_statuses(t),
        advisories=t.strings("advisories", ()),
    )
    t.done()
    return p


def _nitro(t: _Table) -> NitroPolicy:
    pcrs_table = t.table("pcrs")
    pcrs: dict[int, tuple[bytes, ...]] = {}
    for key in list(pcrs_table.data):
        if not (key.isdigit() and int(key) < 32):
            raise PolicyError(f"{pcrs_table.key(key)}: PCR index must be 0..31")
        pcrs[int(key)] = pcrs_table.hexes(key, None)
    pcrs_table.done()
    t.done()
    return NitroPolicy(pcrs)


class _Table:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise PolicyError(f"{path or 'policy'}: expected a table")
        self.data: dict[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise PolicyError(f"unknown policy key {self.key(unknown[0])!r}")

    def table(self, name: str) -> _Table:
        value = self._get(name)
        return _Table({} if value is None else value, self.key(name))

    def flag(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PolicyError(f"{self.key(name)}: expected true or false")
        return value

    def integer(self, name: str, default: int | None, lo: int, hi: int) -> int | None:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise PolicyError(f"{self.key(name)}: expected an integer {lo}..{hi}")
        return value

    def integers(self, name: str, lo: int, hi: int) -> list[int]:
        value = self._get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in value
        ):
            raise PolicyError(f"{self.key(name)}: expected a list of integers {lo}..{hi}")
        return value

    def strings(self, name: str, default: tuple[str, ...], choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{self.key(name)}: expected a list of strings")
        if choices is not None:
            bad = [v for v in value if v not in choices]
            if bad:
                raise PolicyError(f"{self.key(name)}: {bad[0]!r} is not one of {', '.join(choices)}")
        return tuple(value)

    def hexbytes(self, name: str, *, max_size: int) -> bytes | None:
        value = self._get(name)
        if value is None:
            return None
        out = _unhex(value, self.key(name))
        if len(out) > max_size:
            raise PolicyError(f"{self.key(name)}: at most {max_size} bytes")
        return out

    def hexes(self, name: str, size: int | None) -> tuple[bytes, ...]:
        value = self._get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise PolicyError(f"{self.key(name)}: expected a list of hex strings")
        out = tuple(_unhex(v, self.key(name)) for v in value)
        for v in out:
            if size is not None and len(v) != size:
                raise PolicyError(f"{self.key(name)}: each value must be {size} bytes ({2 * size} hex digits)")
            if size is None and len(v) not in (32, 48, 64):
                raise PolicyError(f"{self.key(name)}: each value must be 32, 48 or 64 bytes")
        return out


def _unhex(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise PolicyError(f"{key}: expected a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise PolicyError(f"{key}: {value!r} is not hex") from exc


# --- evaluation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Violation:
    reason: Reason
    message: str


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return not self.violations

    def refuse(self, reason: Reason, message: str) -> None:
        self.violations.append(Violation(reason, message))


def evaluate(claims: Claims, policy: Policy, *, report_data: bytes | None = None) -> Verdict:
    """Judge verified claims against the policy. ``report_data``: a binding the caller requires
    (e.g. the Steward's hash of the CSR key), checked in addition to the policy's own."""
    if not claims.verified:
        raise ValueError("evaluate() takes claims from a successful verification")
    v = Verdict()
    if claims.debug and not policy.debug:
        v.refuse(Reason.POLICY_DEBUG, "the keep runs in debug mode and the policy does not allow debug")
    else:
        v.checks.append(f"debug={claims.debug} (allowed: {policy.debug})")
    for expected in (policy.report_data, report_data):
        if expected is not None:
            _check_report_data(claims, expected, v)
    tech = claims.technology
    if tech == "snp":
        _snp_rules(claims, policy, v)
    elif tech == "tdx":
        _pin(claims, policy.tdx.measurements, policy, v, required="mrtd")
        _min_tee_tcb_svn(claims, policy.tdx.min_tee_tcb_svn, v)
        _tcb_status(claims, policy.tdx.tcb_statuses, policy.tdx.advisories, v)
    elif tech == "sgx":
        _sgx_rules(claims, policy, v)
    elif tech == "nitro":
        pcrs = {f"pcr{i}": values for i, values in policy.nitro.pcrs.items()}
        _pin(claims, pcrs, policy, v, required=None)
    else:
        v.refuse(Reason.POLICY_PLATFORM, f"no policy rules for technology {tech!r}")
    return v


def _check_report_data(claims: Claims, expected: bytes, v: Verdict) -> None:
    actual = claims.report_data or b""
    # The 64-byte field of SNP/TDX/SGX is compared zero-padded; Nitro's user_data exactly.
    if claims.technology != "nitro":
        expected = expected.ljust(64, b"\0")
    if actual != expected:
        v.refuse(Reason.POLICY_REPORT_DATA, f"report data {actual.hex()} is not the required {expected.hex()}")
    else:
        v.checks.append("report data equals the required binding")


def _one_of(
    claims: Claims, name: str, actual: bytes | None, allowed: tuple[bytes, ...], reason: Reason, v: Verdict
) -> None:
    if not allowed:
        return
    if actual is None or actual not in allowed:
        shown = actual.hex() if actual is not None else "absent"
        v.refuse(reason, f"{name} {shown} is not in the policy's allow-list")
    else:
        v.checks.append(f"{name} is allowed by the policy")


def _pin(
    claims: Claims, lists: Mapping[str, tuple[bytes, ...]], policy: Policy, v: Verdict, required: str | None
) -> None:
    """Allow-lists of measurements; strict: at least the primary one must be pinned."""
    for name, allowed in lists.items():
        _one_of(claims, name, claims.measurements.get(name), allowed, Reason.POLICY_MEASUREMENT, v)
    pinned = bool(lists.get(required)) if required else any(lists.values())
    if not pinned and not policy.allow_any_measurement:
        what = f"{claims.technology}.{required}" if required else f"{claims.technology}.pcrs"
        v.refuse(
            Reason.POLICY_MEASUREMENT,
            f"the policy pins no measurement ({what}); set it, or allow_any_measurement = true to inspect only",
        )


def _snp_rules(claims: Claims, policy: Policy, v: Verdict) -> None:
    p = policy.snp
    _pin(claims, {"measurement": p.measurements}, policy, v, required="measurement")
    _one_of(claims, "id_key_digest", claims.signer.get("id_key_digest"), p.id_key_digests, Reason.POLICY_SIGNER, v)
    _one_of(
        claims,
        "author_key_digest",
        claims.signer.get("author_key_digest"),
        p.author_key_digests,
        Reason.POLICY_SIGNER,
        v,
    )
    for name, minimum in p.min_tcb.items():
        if name not in claims.tcb:
            v.checks.append(f"min_tcb.{name} does not apply to {claims.product}")
        elif claims.tcb[name] < minimum:
            v.refuse(Reason.POLICY_TCB, f"TCB {name} SVN {claims.tcb[name]} is below the policy minimum {minimum}")
        else:
            v.checks.append(f"TCB {name} SVN {claims.tcb[name]} >= {minimum}")
    if claims.tcb.get("guest_svn", 0) < p.min_guest_svn:
        v.refuse(Reason.POLICY_TCB, f"guest SVN {claims.tcb.get('guest_svn')} is below {p.min_guest_svn}")
    if p.products and claims.product not in p.products:
        v.refuse(Reason.POLICY_PLATFORM, f"product line {claims.product} is not in {list(p.products)}")
    if claims.signing_key not in p.signing_keys:
        v.refuse(Reason.POLICY_PLATFORM, f"signing key {claims.signing_key} is not in {list(p.signing_keys)}")
    vmpl = claims.details.get("vmpl")
    if p.vmpls and vmpl not in p.vmpls:
        v.refuse(Reason.POLICY_PLATFORM, f"VMPL {vmpl!r} is not in {list(p.vmpls)}")


def _sgx_rules(claims: Claims, policy: Policy, v: Verdict) -> None:
    p = policy.sgx
    _one_of(claims, "mrenclave", claims.measurements.get("mrenclave"), p.mrenclave, Reason.POLICY_MEASUREMENT, v)
    _one_of(claims, "mrsigner", claims.signer.get("mrsigner"), p.mrsigner, Reason.POLICY_SIGNER, v)
    # An enclave is identified by MRENCLAVE, or by MRSIGNER with its product id.
    if not (p.mrenclave or (p.mrsigner and p.isv_prod_id is not None)) and not policy.allow_any_measurement:
        v.refuse(
            Reason.POLICY_MEASUREMENT,
            "the policy pins no enclave (sgx.mrenclave, or sgx.mrsigner with sgx.isv_prod_id); "
            "set one, or allow_any_measurement = true to inspect only",
        )
    prod_id = claims.details.get("isv_prod_id")
    if p.isv_prod_id is not None and prod_id != p.isv_prod_id:
        v.refuse(Reason.POLICY_SIGNER, f"ISV product id {prod_id!r} is not {p.isv_prod_id}")
    if claims.tcb.get("isv_svn", 0) < p.min_isv_svn:
        v.refuse(Reason.POLICY_TCB, f"ISV SVN {claims.tcb.get('isv_svn')} is below {p.min_isv_svn}")
    _tcb_status(claims, p.tcb_statuses, p.advisories, v)


def _min_tee_tcb_svn(claims: Claims, minimum: bytes | None, v: Verdict) -> None:
    if minimum is None:
        return
    actual = claims.details.get("tee_tcb_svn")
    if not isinstance(actual, bytes) or any(a < m for a, m in zip(actual, minimum, strict=True)):
        shown = actual.hex() if isinstance(actual, bytes) else "absent"
        v.refuse(Reason.POLICY_TCB, f"TEE_TCB_SVN {shown} is below the policy minimum {minimum.hex()}")
    else:
        v.checks.append(f"TEE_TCB_SVN >= {minimum.hex()}")


def _tcb_status(claims: Claims, statuses: tuple[str, ...], advisories: tuple[str, ...], v: Verdict) -> None:
    status = claims.tcb_status
    if status not in statuses:
        v.refuse(Reason.TCB_STATUS, f"TCB status {status} is not allowed by the policy ({', '.join(statuses)})")
    unallowed = [a for a in claims.advisory_ids if a not in advisories]
    if unallowed:
        v.refuse(Reason.TCB_STATUS, f"advisories not allowed by the policy: {', '.join(unallowed)}")
    if status in statuses and not unallowed:
        v.checks.append(f"TCB status {status} and advisories {claims.advisory_ids} allowed")
