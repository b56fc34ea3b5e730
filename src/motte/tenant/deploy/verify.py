"""Judge a keep's evidence before anything is sent to it: the technology's checks, the tenant's
policy, and that the report data binds this challenge, this keep's TLS key and this TLS session."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from motte.shared.binding import provision_report_data
from motte.shared.errors import MotteError
from motte.shared.provision import EvidenceOffer
from motte.shared.steward_protocol import StewardProtocolError
from motte.tenant.attest.claims import Claims, VerificationError
from motte.tenant.attest.policy import evaluate
from motte.tenant.deploy.policy import TenantPolicy

if TYPE_CHECKING:
    from motte.tenant.attest.amd_roots import AmdTrust

UNATTESTED = "kvm"  # the technology of nil and kvm keeps: no evidence at all
EXIT_REFUSED = 1  # motte deploy's status when the keep failed the policy


class KeepRefused(MotteError):
    """The keep failed the tenant's checks: nothing was sent to it. ``check`` names the check."""

    def __init__(self, check: str, message: str):
        super().__init__(f"the keep failed the policy ({check}): {message}",
                         hint="nothing was sent to it; the keep is being stopped", exit_code=EXIT_REFUSED)
        self.check = check


class Accepted(NamedTuple):
    technology: str  # "kvm" when unattested
    claims: Claims | None  # None when unattested

    @property
    def attested(self) -> bool:
        return self.claims is not None


def judge(offer: EvidenceOffer, *, nonce: bytes, spki: bytes, exporter: bytes, policy: TenantPolicy,
          now: datetime, amd_trust: AmdTrust | None = None) -> Accepted:
    if offer.technology == UNATTESTED:
        if offer.evidence:
            raise KeepRefused("malformed", "an unattested keep sent evidence bytes")
        if not policy.allow_unattested:
            raise KeepRefused("unattested_refused",
                              f"the keep offers no evidence (a {offer.backend} keep): its host can read everything "
                              "sent to it, and the policy does not allow unattested keeps")
        return Accepted(UNATTESTED, None)
    from motte.tenant.attest.evidence import verify_keep_evidence  # the technology's verifier, on use

    try:
        claims = verify_keep_evidence(offer.technology, offer.evidence, now=now, amd_trust=amd_trust)
    except StewardProtocolError as exc:
        raise KeepRefused("malformed", str(exc)) from None
    except VerificationError as exc:
        raise KeepRefused(exc.reason.value, exc.message) from None
    expected = provision_report_data(offer.technology, nonce, spki, exporter)
    verdict = evaluate(claims, policy.attestation, report_data=expected)
    if not verdict.accepted:
        first = verdict.violations[0]
        raise KeepRefused(first.reason.value, "; ".join(v.message for v in verdict.violations))
    return Accepted(offer.technology, claims)
