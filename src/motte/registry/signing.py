"""Signed tags: a JWS (RFC 7515, flattened JSON serialization, as Drawbridge's tag entries carry
it under ``application/jose+json``) whose payload is the tree's root entry, made and checked with
joserfc. Nothing here is hand-written JOSE.

The protected header of a motte signature::

    {"alg": "ES256", "kid": "<RFC 7638 thumbprint of jwk>", "jwk": {<the publisher's public key>},
     "cty": "application/vnd.drawbridge.entry.v1+json", "motte.tag": "user/repo:0.1.0"}

A publisher is named by its key's thumbprint (``motte package keygen`` prints it; a tenant policy
lists the ones it trusts). A signature counts when its ``kid`` is a trusted thumbprint, the
``jwk`` it carries has exactly that thumbprint, it verifies under that key, and ``motte.tag``
names the very tag it was fetched as: a signed tree cannot be moved to another tag or repository.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from motte.registry.formats import ENTRY_TYPE, Entry, FormatError, canonical_json, load_json
from motte.shared.errors import MotteError
from motte.shared.printable import printable

TAG_HEADER = "motte.tag"
ALGORITHMS = ("ES256", "ES384", "EdDSA")
MAX_SIGNATURES = 8
MAX_KEY_FILE = 64 << 10
#: What must be integrity-protected: an unprotected header carrying any of these is refused. (An
#: unprotected "kid", as in Drawbridge's examples, is ignored: the protected one is what counts.)
PROTECTED_ONLY = ("alg", "jwk", "cty", "crit", TAG_HEADER)

SigningKey = ECKey | OKPKey


class SignatureError(MotteError):
    """A signed tag is malformed, or its signature is not one the policy accepts."""


def _registry() -> JWSRegistry:
    registry = JWSRegistry(header_registry={TAG_HEADER: HeaderParameter("the tag this tree is signed as", "str")},
                           algorithms=list(ALGORITHMS))
    registry.max_header_length = 4096  # the header carries the publisher's public key
    return registry


# --- keys ----------------------------------------------------------------------------------------
def generate_key() -> ECKey:
    return ECKey.generate_key("P-256")


def algorithm_of(key: SigningKey) -> str:
    if isinstance(key, OKPKey):
        return "EdDSA"
    return {"P-256": "ES256", "P-384": "ES384"}.get(key.curve_name, "")


def publisher_id(key: SigningKey) -> str:
    """The key's RFC 7638 thumbprint (SHA-256, base64url): what a policy's ``publishers`` lists."""
    return key.thumbprint()


def write_key(path: Path, key: SigningKey) -> None:
    """The private key as PKCS#8 PEM, created exclusively with mode 0600."""
    pem = key.as_pem(private=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SignatureError(f"{path} exists already; not overwriting a key") from None
    except OSError as exc:
        raise SignatureError(f"cannot create {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(pem)


def read_key(path: Path) -> SigningKey:
    """A publisher's private key from a PEM file (P-256, P-384 or Ed25519)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SignatureError(f"cannot read the signing key {path}: {exc.strerror or exc}") from None
    try:
        raw = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({exc})",
                             hint="make one with motte package keygen") from None
    if isinstance(raw, ec.EllipticCurvePrivateKey) and raw.curve.name in ("secp256r1", "secp384r1"):
        return ECKey.import_key(raw)
    if isinstance(raw, ed25519.Ed25519PrivateKey):
        return OKPKey.import_key(raw)
    raise SignatureError(f"{path}: a signing key must be P-256, P-384 or Ed25519")


def _public_key(jwk: Any) -> SigningKey:
    if not isinstance(jwk, dict) or "d" in jwk:
        raise SignatureError("the signature's jwk is not a public key")
    try:
        key: SigningKey = OKPKey.import_key(jwk) if jwk.get("kty") == "OKP" else ECKey.import_key(jwk)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise SignatureError(f"the signature's jwk is not a key: {exc}") from None
    return key


# --- signing -------------------------------------------------------------------------------------
def sign_tag(entry: Entry, key: SigningKey, tag_name: str) -> bytes:
    """The tag entry body: a flattened JWS over ``entry``, naming ``tag_name`` (``user/repo:tag``)."""
    public = key.as_dict(private=False)
    protected = {"alg": algorithm_of(key), "kid": publisher_id(key), "jwk": public, "cty": ENTRY_TYPE,
                 TAG_HEADER: tag_name}
    obj = jws.serialize_json({"protected": protected}, entry.json_bytes(), key, registry=_registry())
    return canonical_json({"payload": obj["payload"], "protected": obj["protected"], "signature": obj["signature"]})


# --- reading and verifying -----------------------------------------------------------------------
@dataclass(frozen=True)
class TagSignature:
    """One signature of a signed tag, as it claims to be (nothing verified yet)."""

    kid: str | None
    alg: str | None
    tag_name: str | None
    jwk: dict[str, Any] | None
    flattened: dict[str, Any]  # this signature alone, as a flattened JWS


@dataclass(frozen=True)
class SignedTag:
    payload: bytes
    entry: Entry
    signatures: tuple[TagSignature, ...]

    @property
    def signers(self) -> list[str]:
        """Each signature's kid, made safe to print (they came from the registry)."""
        return [printable(s.kid, 60) if s.kid else "(no kid)" for s in self.signatures]


def _unb64url(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureError(f"signed tag: {what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError(f"signed tag: {what} is not base64url") from None


def _signature(member: Any, payload_b64: str) -> TagSignature:
    if not isinstance(member, dict) or not isinstance(member.get("signature"), str):
        raise SignatureError("signed tag: a signature must be an object with a \"signature\"")
    header = member.get("header", {})
    if not isinstance(header, dict):
        raise SignatureError("signed tag: \"header\" must be an object")
    if misplaced := [name for name in PROTECTED_ONLY if name in header]:
        raise SignatureError(f"signed tag: {misplaced[0]!r} is in the unprotected header; it must be protected")
    protected: dict[str, Any] = {}
    if "protected" in member:
        try:
            protected = load_json(_unb64url(member["protected"], "protected"), "signed tag: protected header")
        except FormatError as exc:
            raise SignatureError(str(exc)) from None
        if not isinstance(protected, dict):
            raise SignatureError("signed tag: the protected header must be a JSON object")
    flattened = {"payload": payload_b64, **{k: member[k] for k in ("protected", "header", "signature") if k in member}}

    def text(name: str) -> str | None:
        value = protected.get(name)
        return value if isinstance(value, str) else None

    jwk = protected.get("jwk")
    return TagSignature(text("kid"), text("alg"), text(TAG_HEADER), jwk if isinstance(jwk, dict) else None, flattened)


def parse_signed_tag(body: bytes) -> SignedTag:
    """A signed tag entry (flattened or general JWS JSON) -> its entry and signatures, unverified."""
    try:
        value = load_json(body, "signed tag")
    except FormatError as exc:
        raise SignatureError(str(exc)) from None
    if not isinstance(value, dict) or not isinstance(value.get("payload"), str):
        raise SignatureError("signed tag: expected a JWS JSON object with a \"payload\"")
    payload_b64 = value["payload"]
    if "signatures" in value:
        members = value["signatures"]
        if not isinstance(members, list) or not 1 <= len(members) <= MAX_SIGNATURES:
            raise SignatureError(f"signed tag: \"signatures\" must be a list of 1 to {MAX_SIGNATURES}")
    else:
        members = [value]
    payload = _unb64url(payload_b64, "payload")
    try:
        entry = Entry.parse(payload, "signed tag's entry")
    except FormatError as exc:
        raise SignatureError(str(exc)) from None
    return SignedTag(payload, entry, tuple(_signature(m, payload_b64) for m in members))


def check_signature(signature: TagSignature) -> str:
    """That ``signature`` verifies under the key it carries, whose thumbprint is its ``kid``;
    returns that thumbprint. (Whether to trust the key is the caller's question.)"""
    if signature.alg not in ALGORITHMS:
        raise SignatureError(f"signed tag: algorithm {signature.alg!r} is not one of {', '.join(ALGORITHMS)}")
    key = _public_key(signature.jwk)
    thumbprint = publisher_id(key)
    if signature.kid != thumbprint:
        raise SignatureError(f"signed tag: kid {signature.kid!r} is not the thumbprint of the key it carries")
    try:
        jws.deserialize_json(signature.flattened, key, algorithms=[signature.alg],  # type: ignore[call-overload]
                             registry=_registry())
    except JoseError as exc:
        raise SignatureError(f"the signature by publisher {thumbprint} does not verify ({exc.error}): "
                             "the tag was changed after it was signed") from None
    return thumbprint


def verify_signed_tag(signed: SignedTag, publishers: Collection[str], tag_name: str) -> str:
    """Accept ``signed`` only if a publisher in ``publishers`` signed it, for ``tag_name``, and
    every signature by a trusted publisher verifies. Returns the (first) trusted signer."""
    trusted = [s for s in signed.signatures if s.kid in publishers]
    if not trusted:
        signers = ", ".join(signed.signers)
        raise SignatureError(f"the tag is signed by {signers}: not a publisher the policy trusts",
                             hint="add the publisher's key thumbprint to the policy's publishers")
    for signature in trusted:
        check_signature(signature)
        if signature.tag_name != tag_name:
            signed_for = printable(signature.tag_name, 120) if signature.tag_name else "no tag"
            raise SignatureError(f"the signature by publisher {signature.kid} is for {signed_for}, "
                                 f"not {tag_name}: a signed tree moved to another tag")
    return trusted[0].kid or ""
