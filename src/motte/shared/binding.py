"""What a keep binds into its identity besides its key: the workload and the launch it was given.

The keep hashes the workload bytes it received and the canonical bytes of its launch
(:meth:`motte.shared.control.LaunchTerms.canonical_bytes`), carries those digests in its CSR as
non-critical extensions under 1.3.6.1.4.1.58270.3 (motte's arc), and asks for evidence whose report
data commits to its key *and* those extensions (:func:`csr_report_data`). The Steward checks that
commitment and copies the extensions into the certificate it issues. ``docs/binding.md`` is the
specification, with the ASN.1; in brief::

    .3.0   domain separation of csr_report_data
    .3.1   workloadDigest  OCTET STRING (32)   SHA-256 of the wasm bytes the keep received
    .3.2   launchDigest    OCTET STRING (32)   SHA-256 of LaunchTerms.canonical_bytes()
    .3.3   trustAnchors    SEQUENCE OF SEQUENCE { use UTF8String, sha256 OCTET STRING (32) }
    .3.10  domain separation of provision_report_data (``motte deploy``'s evidence)

Standard library only (the keep loads this module): pure functions over bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from motte.shared.der import (
    TAG_OCTET_STRING,
    TAG_SEQUENCE,
    TAG_UTF8STRING,
    der_octet_string,
    der_oid,
    der_sequence,
    der_utf8,
    read_one,
    read_outer,
    read_string,
)
from motte.shared.steward_protocol import (
    ENARX_ARC,
    StewardProtocolError,
    key_binding,
    reads_der,
    report_data_digest,
)

if TYPE_CHECKING:
    from motte.shared.control import LaunchTerms

BINDING_ARC = ENARX_ARC + ".3"
CSR_BINDING_OID = BINDING_ARC + ".0"
WORKLOAD_DIGEST_OID = BINDING_ARC + ".1"
LAUNCH_DIGEST_OID = BINDING_ARC + ".2"
TRUST_ANCHORS_OID = BINDING_ARC + ".3"
PACKAGE_OID = BINDING_ARC + ".4"
PROVISION_BINDING_OID = BINDING_ARC + ".10"
#: The extensions a keep may claim, in OID order: the order they take in a CSR and a certificate.
CLAIM_OIDS = (WORKLOAD_DIGEST_OID, LAUNCH_DIGEST_OID, TRUST_ANCHORS_OID, PACKAGE_OID)
DIGEST_SIZE = 32
NONCE_SIZE = 32
EXPORTER_SIZE = 32  # RFC 9266 tls-exporter: label "EXPORTER-Channel-Binding", empty context
STEWARD_ANCHOR = "steward"  # the trust anchor use of the launch's steward_ca


class KeepClaims(NamedTuple):
    """The digests a keep computed of what it was given, as its CSR and its certificate carry them."""

    workload_sha256: bytes
    launch_sha256: bytes
    trust_anchors: tuple[tuple[str, bytes], ...] = ()  # (use, SHA-256 of the PEM), sorted by use
    package: str | None = None  # the registry package deployed ("host/user/repo:tag"), if any

    @classmethod
    def of(cls, workload_sha256: bytes, terms: LaunchTerms) -> KeepClaims:
        """The claims of a launch whose workload bytes hash to ``workload_sha256`` (the keep's own
        digest of the bytes it received, never the one the host announced)."""
        anchors = [] if terms.steward_ca is None else [(STEWARD_ANCHOR, _pem_sha256(terms.steward_ca))]
        for fd, pem in terms.ca_bundles.items():
            anchors.append((f"connect {fd} {terms.config.files[fd].name}", _pem_sha256(pem)))
        return cls(workload_sha256, hashlib.sha256(terms.canonical_bytes()).digest(), tuple(sorted(anchors)),
                   terms.package)

    def extensions(self) -> list[tuple[str, bytes]]:
        """(OID, DER extnValue) of each claim, in OID order; trustAnchors only when there are any."""
        self._check()
        out = [
            (WORKLOAD_DIGEST_OID, der_octet_string(self.workload_sha256)),
            (LAUNCH_DIGEST_OID, der_octet_string(self.launch_sha256)),
        ]
        if self.trust_anchors:
            entries = (der_sequence(der_utf8(use), der_octet_string(digest)) for use, digest in self.trust_anchors)
            out.append((TRUST_ANCHORS_OID, der_sequence(*entries)))
        if self.package is not None:
            out.append((PACKAGE_OID, der_utf8(self.package)))
        return out

    @classmethod
    @reads_der
    def from_extensions(cls, extensions: Sequence[tuple[str, bytes]]) -> KeepClaims | None:
        """The claims in ``extensions`` (every one an OID under the binding arc, in OID order, each
        at most once); None when there are none. Anything else is a StewardProtocolError."""
        if not extensions:
            return None
        values: dict[str, bytes] = {}
        last = -1
        for oid, value in extensions:
            if oid not in CLAIM_OIDS:
                raise StewardProtocolError(f"unknown binding extension {oid}")
            index = CLAIM_OIDS.index(oid)
            if index <= last:
                raise StewardProtocolError(
                    f"binding extension {oid} " + ("appears twice" if index == last else "is out of OID order")
                )
            values[oid], last = value, index
        for oid, name in ((WORKLOAD_DIGEST_OID, "workloadDigest"), (LAUNCH_DIGEST_OID, "launchDigest")):
            if oid not in values:
                raise StewardProtocolError(f"the binding extensions lack {name} ({oid})")
        anchors = values.get(TRUST_ANCHORS_OID)
        package = values.get(PACKAGE_OID)
        claims = cls(
            read_one(values[WORKLOAD_DIGEST_OID], TAG_OCTET_STRING, "workloadDigest"),
            read_one(values[LAUNCH_DIGEST_OID], TAG_OCTET_STRING, "launchDigest"),
            () if anchors is None else _read_trust_anchors(anchors),
            None if package is None else read_string(package, TAG_UTF8STRING, "package"),
        )
        if anchors is not None and not claims.trust_anchors:
            raise StewardProtocolError("trustAnchors is empty (it must be omitted then)")
        claims._check()
        return claims

    def _check(self) -> None:
        for name, digest in (("workloadDigest", self.workload_sha256), ("launchDigest", self.launch_sha256)):
            if len(digest) != DIGEST_SIZE:
                raise StewardProtocolError(f"{name} must be {DIGEST_SIZE} bytes, not {len(digest)}")
        for i, (use, digest) in enumerate(self.trust_anchors):
            if len(digest) != DIGEST_SIZE:
                raise StewardProtocolError(f"trust anchor {use!r}: sha256 must be {DIGEST_SIZE} bytes")
            if i and use <= self.trust_anchors[i - 1][0]:
                raise StewardProtocolError(f"trust anchor {use!r}: trustAnchors must be sorted by use, each once")


def _pem_sha256(pem: str) -> bytes:
    # surrogatepass: a PEM with a lone surrogate (which the TLS layer then refuses) must not crash this
    return hashlib.sha256(pem.encode("utf-8", "surrogatepass")).digest()


def _read_trust_anchors(value: bytes) -> tuple[tuple[str, bytes], ...]:
    entries = read_outer(value, TAG_SEQUENCE, "trustAnchors", "trustAnchors")
    anchors = []
    while not entries.at_end:
        entry = entries.enter(TAG_SEQUENCE, "TrustAnchor", "trustAnchors entry")
        use = read_string(entry.read(TAG_UTF8STRING, "use").encoded, TAG_UTF8STRING, "trust anchor use")
        digest = entry.read(TAG_OCTET_STRING, "sha256").content
        entry.done()
        anchors.append((use, digest))
    return tuple(anchors)


# --- report data ---------------------------------------------------------------------------------
def _extension(oid: str, value: bytes) -> bytes:
    return der_sequence(der_oid(oid), der_octet_string(value))  # non-critical: no BOOLEAN


def csr_report_data(spki: bytes, technology: str, extensions: Sequence[tuple[str, bytes]]) -> bytes:
    """The 64 bytes of report data of a CSR for the key whose DER SPKI is ``spki`` that carries the
    binding ``extensions`` (OID, extnValue), in CSR order. Without any, :func:`key_binding`, so an
    Enarx-shaped CSR is unchanged; with some, the hash of
    ``SEQUENCE { OID .3.0, SubjectPublicKeyInfo, SEQUENCE OF Extension }``."""
    if not extensions:
        return key_binding(spki, technology)
    bound = der_sequence(der_oid(CSR_BINDING_OID), spki, der_sequence(*(_extension(o, v) for o, v in extensions)))
    return report_data_digest(bound, technology)


def provision_report_data(technology: str, nonce: bytes, spki: bytes, exporter: bytes) -> bytes:
    """The 64 bytes of report data of a keep's answer to a tenant's provisioning nonce: the hash of
    ``SEQUENCE { OID .3.10, nonce OCTET STRING, SubjectPublicKeyInfo, exporter OCTET STRING }``,
    where ``exporter`` is the TLS session's RFC 9266 tls-exporter value."""
    if len(nonce) != NONCE_SIZE:
        raise StewardProtocolError(f"the provisioning nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
    if len(exporter) != EXPORTER_SIZE:
        raise StewardProtocolError(f"the TLS exporter value must be {EXPORTER_SIZE} bytes, not {len(exporter)}")
    bound = der_sequence(der_oid(PROVISION_BINDING_OID), der_octet_string(nonce), spki, der_octet_string(exporter))
    return report_data_digest(bound, technology)
