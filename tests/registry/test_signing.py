"""Signed tags: made and checked with joserfc; which ones a tenant's policy accepts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from motte.registry.formats import DIRECTORY_TYPE, ENTRY_TYPE, JWS_TYPE, Entry, Meta, canonical_json, parse_tag_slug
from motte.registry.signing import (
    SignatureError,
    generate_key,
    parse_signed_tag,
    publisher_id,
    read_key,
    sign_tag,
    verify_signed_tag,
    write_key,
)
from motte.tenant.registry.fetch import PackageRefused, check_tag
from motte.tenant.registry.policy import RegistryPolicy, RegistryPolicyError

ROOT = Entry(Meta.of(b'{"main.wasm":{}}', DIRECTORY_TYPE))
SLUG = parse_tag_slug("registry.example/alice/app:0.1.0")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_signed_tag_is_a_flattened_jws_over_the_root_entry() -> None:
    key = generate_key()
    body = sign_tag(ROOT, key, "alice/app:0.1.0")
    value = json.loads(body)
    assert list(value) == ["payload", "protected", "signature"]  # Drawbridge's flattened form
    assert unb64url(value["payload"]) == ROOT.json_bytes()
    protected = json.loads(unb64url(value["protected"]))
    assert protected["alg"] == "ES256" and protected["cty"] == ENTRY_TYPE
    assert protected["kid"] == publisher_id(key) and protected["motte.tag"] == "alice/app:0.1.0"
    assert "d" not in protected["jwk"]
    signed = parse_signed_tag(body)
    assert signed.entry == ROOT
    assert verify_signed_tag(signed, {publisher_id(key)}, "alice/app:0.1.0") == publisher_id(key)


def test_keys_are_written_privately_and_read_back(tmp_path: Path) -> None:
    key = generate_key()
    write_key(tmp_path / "publisher.key", key)
    assert (tmp_path / "publisher.key").stat().st_mode & 0o777 == 0o600
    assert publisher_id(read_key(tmp_path / "publisher.key")) == publisher_id(key)
    with pytest.raises(SignatureError, match="exists already"):
        write_key(tmp_path / "publisher.key", key)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(SignatureError, match="not an unencrypted PEM private key"):
        read_key(tmp_path / "junk.key")


def test_a_tag_by_another_publisher_is_refused() -> None:
    key, other = generate_key(), generate_key()
    signed = parse_signed_tag(sign_tag(ROOT, other, "alice/app:0.1.0"))
    with pytest.raises(SignatureError, match="not a publisher the policy trusts"):
        verify_signed_tag(signed, {publisher_id(key)}, "alice/app:0.1.0")


def test_a_changed_payload_does_not_verify() -> None:
    key = generate_key()
    value = json.loads(sign_tag(ROOT, key, "alice/app:0.1.0"))
    evil = Entry(Meta.of(b'{"main.wasm":{"evil":1}}', DIRECTORY_TYPE))
    value["payload"] = b64url(evil.json_bytes())
    signed = parse_signed_tag(canonical_json(value))
    assert signed.entry == evil
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signed_tag(signed, {publisher_id(key)}, "alice/app:0.1.0")


def test_a_signed_tree_moved_to_another_tag_is_refused() -> None:
    key = generate_key()
    signed = parse_signed_tag(sign_tag(ROOT, key, "alice/app:0.1.0"))
    with pytest.raises(SignatureError, match=r"for alice/app:0\.1\.0, not alice/app:0\.2\.0"):
        verify_signed_tag(signed, {publisher_id(key)}, "alice/app:0.2.0")
    with pytest.raises(SignatureError, match=r"not mallory/app:0\.1\.0"):
        verify_signed_tag(signed, {publisher_id(key)}, "mallory/app:0.1.0")


def test_a_key_swapped_in_under_a_trusted_kid_is_refused() -> None:
    key, mallory = generate_key(), generate_key()
    value = json.loads(sign_tag(ROOT, mallory, "alice/app:0.1.0"))
    protected = json.loads(unb64url(value["protected"]))
    protected["kid"] = publisher_id(key)  # claims to be alice's key, carries (and is signed by) mallory's
    value["protected"] = b64url(canonical_json(protected))
    with pytest.raises(SignatureError, match="not the thumbprint of the key it carries"):
        verify_signed_tag(parse_signed_tag(canonical_json(value)), {publisher_id(key)}, "alice/app:0.1.0")


def test_security_parameters_must_be_protected() -> None:
    value = json.loads(sign_tag(ROOT, generate_key(), "alice/app:0.1.0"))
    for name in ("alg", "jwk", "motte.tag"):
        with pytest.raises(SignatureError, match="unprotected header"):
            parse_signed_tag(canonical_json({**value, "header": {name: "x"}}))


def test_drawbridge_s_jws_shapes_are_read() -> None:
    # Drawbridge's tag-entry tests accept a flattened JWS with an unprotected kid, one without a
    # header, and the general form; a motte signature reads the same in each.
    key = generate_key()
    value = json.loads(sign_tag(ROOT, key, "alice/app:0.1.0"))
    shapes = [
        {**value, "header": {"kid": "e9bc097a-ce51-4036-9562-d2ade882db0d"}},
        value,
        {"payload": value["payload"],
         "signatures": [{"protected": value["protected"], "signature": value["signature"]}]},
    ]
    for shape in shapes:
        signed = parse_signed_tag(canonical_json(shape))
        assert verify_signed_tag(signed, {publisher_id(key)}, "alice/app:0.1.0") == publisher_id(key)


def test_the_policy_decides_about_unsigned_and_unknown_signers() -> None:
    key = generate_key()
    unsigned = ROOT.json_bytes()
    signed = sign_tag(ROOT, key, SLUG.tag_name)
    strict = RegistryPolicy(frozenset({publisher_id(key)}))
    assert check_tag(signed, JWS_TYPE, SLUG, strict).signer == publisher_id(key)
    with pytest.raises(PackageRefused, match="not signed, and the policy accepts signed tags only"):
        check_tag(unsigned, ENTRY_TYPE, SLUG, strict)
    with pytest.raises(PackageRefused, match="not a publisher the policy trusts"):
        check_tag(signed, JWS_TYPE, SLUG, RegistryPolicy())
    lax = RegistryPolicy(allow_unsigned=True)
    assert check_tag(unsigned, ENTRY_TYPE, SLUG, lax).signer is None
    assert check_tag(signed, JWS_TYPE, SLUG, lax).signer is None  # signed by no one it trusts: as unsigned
    # ... but a trusted publisher's signature must verify, whatever allow_unsigned says
    value = json.loads(signed)
    value["payload"] = b64url(Entry(Meta.of(b"x", DIRECTORY_TYPE)).json_bytes())
    with pytest.raises(PackageRefused, match="does not verify"):
        check_tag(canonical_json(value), JWS_TYPE, SLUG, RegistryPolicy(strict.publishers, allow_unsigned=True))


def test_policy_tables_are_checked() -> None:
    key = generate_key()
    policy = RegistryPolicy.from_table({"publishers": [publisher_id(key)], "allow_unsigned": True, "other": 1})
    assert policy == RegistryPolicy(frozenset({publisher_id(key)}), True)
    assert RegistryPolicy.from_table({}) == RegistryPolicy(frozenset(), False)
    for table, message in (({"publishers": "x"}, "list"), ({"publishers": ["short"]}, "not a key thumbprint"),
                           ({"allow_unsigned": "yes"}, "true or false")):
        with pytest.raises(RegistryPolicyError, match=message):
            RegistryPolicy.from_table(table)


def test_what_a_signature_claims_is_escaped_before_it_is_shown() -> None:
    value = json.loads(sign_tag(ROOT, generate_key(), "alice/app:0.1.0"))
    protected = json.loads(unb64url(value["protected"]))
    protected["kid"] = "\x1b[2J\x1b[31mtrusted"
    value["protected"] = b64url(canonical_json(protected))
    with pytest.raises(PackageRefused) as caught:
        check_tag(canonical_json(value), JWS_TYPE, SLUG, RegistryPolicy())
    assert "\x1b" not in str(caught.value) and "\\x1b[2J" in str(caught.value)
