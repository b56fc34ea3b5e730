"""Drawbridge's wire formats: byte-for-byte against Drawbridge's own test vectors, and every name
and path a client could use to escape refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from motte.registry.formats import (
    API_PREFIX,
    DIRECTORY_TYPE,
    OCTET_TYPE,
    Entry,
    FormatError,
    Meta,
    Route,
    compute_digests,
    directory_bytes,
    format_content_digest,
    parse_content_digest,
    parse_directory,
    parse_repo_slug,
    parse_route,
    parse_tag_slug,
    parse_user_slug,
    semver_key,
)
from motte.tenant.registry.tree import TreeError, build_tree

# Drawbridge's digest test (crates/type/src/digest): the four digests of b"foo", as a header.
FOO_CONTENT_DIGEST = (
    "sha-224=:CAj2TmDViXn8tnbJbsk4Jw3qQkRa7vzTpOb42w==:,"
    "sha-256=:LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=:,"
    "sha-384=:mMEf/f3VQGdrGhN8saIrKnA1DJpEFx1rEYDGvly7LuP3nVMsih3Z7y6OCOdSo7q7:,"
    "sha-512=:9/u6bgY2+JDlb7vzKD5STG+jIErimDgtYkdB0NxmODJuKCxBvl5CVNiCB3LFUYosWowMf37aGVlKfrU5RT4e1w==:"
)
# Drawbridge's Meta serialization test (crates/type/src/meta.rs): its digest is 47 bytes, not a
# real SHA-384, which Drawbridge never checks and motte refuses to read (it still writes the same bytes).
META_DIGEST = "mqVuAfXRKap7bdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8w="
META_JSON = b'{"digest":{"sha-384":"' + META_DIGEST.encode() + b'"},"length":42,"type":"text/plain"}'


def test_content_digest_of_foo_is_drawbridge_s_byte_for_byte() -> None:
    assert format_content_digest(compute_digests(b"foo")) == FOO_CONTENT_DIGEST
    assert parse_content_digest(FOO_CONTENT_DIGEST) == compute_digests(b"foo")
    assert parse_content_digest("SHA-256=:LCa0a2j/xo/5m0U8HTBBNBNCLXBkg7+g+YpeiGJm564=:") == {
        "sha-256": compute_digests(b"foo")["sha-256"]}  # algorithm names are case-insensitive, as Drawbridge's


def test_meta_json_is_drawbridge_s_byte_for_byte() -> None:
    meta = Meta({"sha-384": base64.b64decode(META_DIGEST)}, 42, "text/plain")
    assert meta.json_bytes() == META_JSON
    with pytest.raises(FormatError, match="47 bytes, not 48"):
        Meta.from_json(json.loads(META_JSON))


def test_a_full_meta_round_trips_with_its_keys_in_drawbridge_s_order() -> None:
    meta = Meta.of(b"foo", "application/wasm")
    raw = meta.json_bytes()
    assert raw.startswith(b'{"digest":{"sha-224":') and raw.endswith(b'},"length":3,"type":"application/wasm"}')
    assert list(json.loads(raw)["digest"]) == ["sha-224", "sha-256", "sha-384", "sha-512"]
    assert Meta.from_json(json.loads(raw)) == meta
    assert meta.content_digest == FOO_CONTENT_DIGEST


def test_entries_keep_custom_fields_after_the_meta() -> None:
    entry = Entry.parse(Meta.of(b"x", OCTET_TYPE).json_bytes()[:-1] + b',"from":"elsewhere"}')
    assert entry.custom == {"from": "elsewhere"}
    assert entry.json_bytes().endswith(b'"type":"application/octet-stream","from":"elsewhere"}')


@pytest.mark.parametrize("body, message", [
    (b'{"digest":{"sha-256":"z4DNiu1ILV0VJ9fccvzv+E5jJlkoSER9LcCw6H38mpA="}}', "length"),  # Drawbridge's oldest entries
    (b'{"digest":{},"length":1,"type":"a/b"}', "at least one"),
    (b'{"digest":{"md5":"AAAA"},"length":1,"type":"a/b"}', "unknown digest algorithm"),
    (b'{"digest":{"sha-224":"' + base64.b64encode(bytes(28)) + b'"},"length":1,"type":"a/b"}', "no digest of"),
    (b'{"digest":{"sha-256":"' + base64.b64encode(bytes(32)) + b'"},"length":-1,"type":"a/b"}', "length"),
    (b'{"digest":{"sha-256":"' + base64.b64encode(bytes(32)) + b'"},"length":true,"type":"a/b"}', "length"),
    (b'{"digest":{"sha-256":"' + base64.b64encode(bytes(32)) + b'"},"length":1,"type":"a b"}', "media type"),
    (b'{"length":1,"length":2}', "duplicate key"),
    (b'{"x":NaN}', "NaN"),
])
def test_malformed_entries_are_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Entry.parse(body)


def test_a_tree_is_built_as_drawbridge_builds_it(tmp_path: Path) -> None:
    # Drawbridge's Tree::from_path_sync test: a file and a folder holding a file.
    (tmp_path / "test-file-foo").write_bytes(b"foo")
    (tmp_path / "test-dir").mkdir()
    (tmp_path / "test-dir" / "test-file-bar").write_bytes(b"bar")
    nodes = build_tree(tmp_path)
    assert [n.path for n in nodes] == [(), ("test-dir",), ("test-dir", "test-file-bar"), ("test-file-foo",)]
    bar, foo = Meta.of(b"bar", OCTET_TYPE), Meta.of(b"foo", OCTET_TYPE)
    test_dir = directory_bytes({"test-file-bar": Entry(bar)})
    root = directory_bytes({"test-dir": Entry(Meta.of(test_dir, DIRECTORY_TYPE)), "test-file-foo": Entry(foo)})
    assert nodes[1].content == test_dir and nodes[0].content == root
    assert nodes[0].meta == Meta.of(root, DIRECTORY_TYPE)
    assert root.startswith(b'{"test-dir":{"digest":{') and b" " not in root  # compact, sorted by name
    assert parse_directory(root, 10) == {"test-dir": Entry(Meta.of(test_dir, DIRECTORY_TYPE)),
                                         "test-file-foo": Entry(foo)}


def test_a_tree_refuses_links_and_names_a_tree_cannot_hold(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with pytest.raises(TreeError, match="symbolic link"):
        build_tree(tmp_path)
    (tmp_path / "link").unlink()
    (tmp_path / "a name").write_bytes(b"x")
    with pytest.raises(TreeError, match="invalid name"):
        build_tree(tmp_path)


@pytest.mark.parametrize("path, route", [
    ("/alice", Route("user", "alice")),
    ("/alice/app", Route("repo", "alice", "app")),
    ("/alice/app/_tag", Route("tags", "alice", "app")),
    ("/alice/app/_tag/0.1.0", Route("tag", "alice", "app", "0.1.0")),
    ("/alice/app/_tag/0.1.0/tree", Route("tree", "alice", "app", "0.1.0")),
    ("/alice/app/_tag/0.1.0/tree/", Route("tree", "alice", "app", "0.1.0")),
    ("/alice/app/_tag/1.2.3-rc.1+b5/tree/dir/main.wasm",
     Route("tree", "alice", "app", "1.2.3-rc.1+b5", ("dir", "main.wasm"))),
])
def test_routes_parse_and_print_back(path: str, route: Route) -> None:
    assert parse_route(API_PREFIX + path) == route
    assert parse_route(route.url_path()) == route


@pytest.mark.parametrize("path", [
    "/alice/app/_tag/0.1.0/tree/../../../etc/passwd",
    "/alice/app/_tag/0.1.0/tree/a/../b",
    "/alice/app/_tag/0.1.0/tree/./a",
    "/alice/app/_tag/0.1.0/tree//a",
    "/alice/app/_tag/0.1.0/tree/%2e%2e/x",
    "/alice/app/_tag/../tree",
    "/alice/app/_tag/..",
    "/../app",
    "/alice/../_tag/0.1.0",
    "/alice/app/_tag/0.1.0/treex",
    "/alice/app/_blob/0.1.0",
    "/alice/a.pp",
    "/al%69ce",
])
def test_paths_that_escape_or_are_not_names_are_refused(path: str) -> None:
    with pytest.raises(FormatError):
        parse_route(API_PREFIX + path)


def test_slugs_split_as_enarx_splits_them() -> None:
    slug = parse_tag_slug("127.0.0.1:8443/alice/app:0.1.0")
    assert (slug.host, slug.user, slug.repo, slug.tag) == ("127.0.0.1:8443", "alice", "app", "0.1.0")
    assert str(slug) == "127.0.0.1:8443/alice/app:0.1.0" and slug.tag_name == "alice/app:0.1.0"
    assert parse_tag_slug("alice/app:1.0.0", "registry.example").host == "registry.example"
    assert parse_repo_slug("[::1]:8443/alice/app").host == "[::1]:8443"
    assert parse_user_slug("registry.example/alice").user == "alice"
    for bad in ("alice/app:0.1.0", "h/alice/app", "h/alice/app:latest", "h/a/b/alice/app:0.1.0", "h/al ice/app:0.1.0"):
        with pytest.raises(FormatError):
            parse_tag_slug(bad)


def test_tags_sort_by_version_precedence() -> None:
    tags = ["1.0.0", "0.10.0", "0.9.0", "1.0.0-rc.1", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-alpha.10"]
    assert sorted(tags, key=semver_key) == [
        "0.9.0", "0.10.0", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-alpha.10", "1.0.0-rc.1", "1.0.0"]


def test_a_slug_s_host_splits_into_name_and_port() -> None:
    from motte.tenant.registry.client import split_host

    assert split_host("registry.example") == ("registry.example", None)
    assert split_host("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert split_host("[::1]:8443") == ("::1", 8443)
    assert split_host("[::1]") == ("::1", None)
