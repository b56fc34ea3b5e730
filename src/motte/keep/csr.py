"""The keep's identity request: a fresh key, evidence bound to it, and a PKCS#10 CSR carrying both.

Pure apart from the evidence source (which asks the hardware). The sequence the keep runtime runs
when Enarx.toml names a Steward::

    claims = KeepClaims.of(workload_sha256, launch.terms)  # what the keep was given, hashed here
    request = certificate_request(source_for(backend), claims=claims)  # key + evidence bound to both + CSR
    exchange = StewardExchange(config.steward, request)   # https URL -> host, port, HTTP bytes
    # a TLS client connection (through the host's TCP relay) to exchange.url.host:exchange.url.port
    send(exchange.outgoing())
    while (chain := exchange.receive(recv())) is None:    # recv() -> b"" at end of stream
        pass
    # serve TLS with chain.certificates (leaf, CA) and request.key

Without a Steward the keep serves a self-signed certificate instead, which proves nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from motte.keep.evidence import Evidence, EvidenceSource
from motte.shared.binding import KeepClaims, csr_report_data
from motte.shared.errors import MotteError
from motte.shared.steward_certs import IssuedChain, csr_hash, key_curve, read_issued_chain, spki_der
from motte.shared.steward_http import ResponseReader, StewardUrl, build_request, parse_steward_url


class CertificateRequest(NamedTuple):
    key: ec.EllipticCurvePrivateKey
    evidence: Evidence
    csr: bytes  # DER
    claims: KeepClaims | None = None

    @property
    def report_data(self) -> bytes:
        return report_data(self.key, self.evidence.technology, self.claims)


def report_data(key: ec.EllipticCurvePrivateKey, technology: str, claims: KeepClaims | None) -> bytes:
    """What the evidence must carry: the key and, when given, the claims (:func:`csr_report_data`)."""
    return csr_report_data(spki_der(key.public_key()), technology, claims.extensions() if claims else ())


def generate_key(technology: str) -> ec.EllipticCurvePrivateKey:
    """P-384 on SNP, P-256 otherwise; a fresh key every time the keep starts."""
    return ec.generate_private_key(key_curve(technology))


def build_csr(key: ec.EllipticCurvePrivateKey, evidence: Evidence, claims: KeepClaims | None = None) -> bytes:
    """A CSR with an empty subject and one ``extensionRequest`` holding non-critical extensions:
    first the technology's OID with the DER evidence as its value, then the claims' extensions in
    OID order (none without claims: then the CSR is exactly Enarx's)."""
    expected = key_curve(evidence.technology)
    if key.curve.name != expected.name:
        raise MotteError(f"a {evidence.technology} keep's key must be {expected.name}, not {key.curve.name}")
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    for oid, value in [(evidence.oid, evidence.value), *(claims.extensions() if claims else ())]:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return builder.sign(key, csr_hash(evidence.technology)).public_bytes(Encoding.DER)


def certificate_request(source: EvidenceSource, key: ec.EllipticCurvePrivateKey | None = None,
                        claims: KeepClaims | None = None) -> CertificateRequest:
    """Generate the key (unless given), gather evidence bound to it and to ``claims``, and build the CSR."""
    key = key or generate_key(source.technology)
    evidence = source.collect(report_data(key, source.technology, claims))
    if evidence.technology != source.technology:
        raise MotteError(f"evidence source says {source.technology} but produced {evidence.technology} evidence")
    return CertificateRequest(key, evidence, build_csr(key, evidence, claims), claims)


def accept_response(request: CertificateRequest, status: int, body: bytes, reason: str | None = None) -> IssuedChain:
    """The Steward's answer: [CA, issued] for this key on 200, a one-line MotteError otherwise
    (naming the ``Motte-Reason`` code when the Steward sent one)."""
    if status != 200:
        lines = body[:300].decode("utf-8", "replace").strip().splitlines()
        detail = lines[0] if lines else ""
        code = "".join(c for c in (reason or "")[:64] if c.isalnum() or c in "_-.")  # from the network: tame it
        if code and not detail.startswith(code):  # motte's Steward starts its body with the code already
            detail = f"{code}: {detail}" if detail else code
        raise MotteError(
            f"the Steward refused the keep's certificate request: HTTP {status}" + (f": {detail}" if detail else ""),
            hint="the Steward's log says why; check its policy" if status in (400, 401) else None,
        )
    return read_issued_chain(body, request.key.public_key())


class StewardExchange:
    """One certificate request to a Steward, sans-I/O: the bytes to send, then the bytes received
    until the answer is complete. The caller owns the connection (TLS inside the keep, TCP relayed
    by the host), so every transport and every test shares this one implementation."""

    def __init__(self, steward_url: str, request: CertificateRequest) -> None:
        self.url: StewardUrl = parse_steward_url(steward_url)
        self.request = request
        self._reader = ResponseReader()

    def outgoing(self) -> bytes:
        return build_request(self.url, self.request.csr)

    def receive(self, data: bytes) -> IssuedChain | None:
        """Feed what arrived (``b""`` at end of stream). None until the response is complete; then
        the issued chain, or MotteError / StewardProtocolError if the Steward refused or answered badly."""
        if data:
            self._reader.feed(data)
        else:
            self._reader.feed_eof()
        if not self._reader.complete:
            return None
        reason = self._reader.headers.get("motte-reason")
        return accept_response(self.request, self._reader.status, self._reader.body, reason)
