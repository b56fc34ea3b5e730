"""The registry end to end: a real server on 127.0.0.1 over HTTPS with a test CA, the real client."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from motte.registry.app import Registry
from motte.registry.formats import (
    API_PREFIX,
    DIRECTORY_TYPE,
    ENTRY_TYPE,
    JSON_TYPE,
    Entry,
    Meta,
    canonical_json,
    compute_digests,
    format_content_digest,
)
from motte.registry.signing import generate_key, publisher_id
from motte.registry.store import StoreLimits
from motte.tenant.deploy.package import load_package
from motte.tenant.registry.client import RegistryError
from motte.tenant.registry.fetch import PackageRefused, fetch_package
from motte.tenant.registry.policy import RegistryPolicy
from motte.tenant.registry.publish import publish
from tests.registry.conftest import make_package, padded_wasm, raw_request

CONFIG_WITH_CA = """\
args = ["hello"]
[[files]]
kind = "stdin"
[[files]]
kind = "stdout"
[[files]]
kind = "stderr"
[[files]]
kind = "connect"
name = "db"
prot = "tls"
host = "db.example"
port = 443
ca = "certs/db-ca.pem"
"""


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return generate_key()


def entry_headers(body: bytes) -> dict[str, str]:
    return {"Content-Type": ENTRY_TYPE, "Content-Digest": Meta.of(body, ENTRY_TYPE).content_digest}


def trusting(key) -> RegistryPolicy:  # type: ignore[no-untyped-def]
    return RegistryPolicy(frozenset({publisher_id(key)}))


def test_publish_info_fetch_round_trip(start_registry, tmp_path: Path, tls_dir: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    folder = make_package(tmp_path / "pkg", config=CONFIG_WITH_CA,
                          extra={"certs/db-ca.pem": (tls_dir / "steward-tls-ca.pem").read_bytes()})
    slug = reg.slug("alice/app:0.1.0")
    progress: list[tuple[int, int]] = []
    done = publish(reg.client(), slug, folder, key, lambda d, t: progress.append((d, t)))
    assert (done.nodes, done.uploaded, done.signer) == (5, 5, publisher_id(key))
    assert progress[-1][0] == progress[-1][1] == done.bytes

    status, headers, body = raw_request(reg, "GET", slug.route("tag").url_path(), token=False)
    assert status == 200 and headers["content-type"] == "application/jose+json"
    assert headers["content-digest"] == format_content_digest(compute_digests(body))
    status, headers, body = raw_request(reg, "HEAD", slug.route("tree", ("main.wasm",)).url_path(), token=False)
    assert (status, body) == (200, b"") and headers["content-length"] == str((folder / "main.wasm").stat().st_size)
    assert json.loads(raw_request(reg, "GET", slug.route("tags").url_path())[2]) == ["0.1.0"]

    fetched = fetch_package(slug, reg.trust(token=None), trusting(key))
    local = load_package(folder)
    assert fetched.package == local._replace(source=str(slug), registry_name=str(slug))
    assert fetched.package.ca_bundles == {3: (tls_dir / "steward-tls-ca.pem").read_text()}
    assert (fetched.signer, fetched.slug.tag_name, fetched.root) == (publisher_id(key), "alice/app:0.1.0", done.root)


def test_a_single_wasm_is_a_package_too(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    wasm = make_package(tmp_path / "pkg") / "main.wasm"
    slug = reg.slug("alice/app:1.0.0")
    assert publish(reg.client(), slug, wasm, key).root.type == "application/wasm"
    fetched = fetch_package(slug, reg.trust(), trusting(key))
    assert fetched.package.wasm == wasm.read_bytes() and fetched.package.config.files


def test_a_tag_never_changes_and_republishing_it_is_harmless(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    slug = reg.slug("alice/app:0.1.0")
    folder = make_package(tmp_path / "pkg")
    publish(reg.client(), slug, folder, key)
    again = publish(reg.client(), slug, folder, key)
    assert again.uploaded == 0
    make_package(folder, config='args = ["other"]\n')
    with pytest.raises(RegistryError, match="published with other content") as caught:
        publish(reg.client(), slug, folder, key)
    assert caught.value.status == 409
    assert fetch_package(slug, reg.trust(), trusting(key)).package.config.args == ("hello",)


def test_concurrent_publishes_of_two_tags_of_one_repo_both_land(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    slugs = [reg.slug(f"alice/app:0.{n}.0") for n in (1, 2)]
    folders = [make_package(tmp_path / f"pkg{n}", wasm=padded_wasm(3 << 20)) for n in (1, 2)]
    errors: list[BaseException] = []
    started = threading.Barrier(2)

    def run(n: int) -> None:
        try:
            started.wait()
            publish(reg.client(), slugs[n], folders[n], key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for slug, folder in zip(slugs, folders, strict=True):
        assert fetch_package(slug, reg.trust(), trusting(key)).package.wasm == (folder / "main.wasm").read_bytes()
    assert json.loads(raw_request(reg, "GET", slugs[0].route("tags").url_path())[2]) == ["0.1.0", "0.2.0"]


def test_a_blob_changed_on_disk_is_not_served(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    events: list[str] = []
    reg = start_registry(log=events.append)
    reg.register()
    slug = reg.slug("alice/app:0.1.0")
    folder = make_package(tmp_path / "pkg", wasm=padded_wasm(3 << 20))
    publish(reg.client(), slug, folder, key)
    digest = compute_digests((folder / "main.wasm").read_bytes())["sha-256"].hex()
    blob = reg.store_dir / "blobs" / "sha256" / digest[:2] / digest
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="cut short"):
        fetch_package(slug, reg.trust(), trusting(key))
    assert any("CORRUPT" in line for line in events)


class LyingRegistry(Registry):
    """A registry that serves other bytes than were published (but the published headers)."""

    async def _send_verified(self, request, response, blob, meta):  # type: ignore[no-untyped-def]
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        await response.write(bytes(data))
        await response.write_eof()


def test_bytes_that_do_not_match_their_entry_are_caught_by_the_client(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry(registry_type=LyingRegistry)
    reg.register()
    slug = reg.slug("alice/app:0.1.0")
    publish(reg.client(), slug, make_package(tmp_path / "pkg"), key)
    with pytest.raises(PackageRefused, match="does not have the digest its entry names"):
        fetch_package(slug, reg.trust(), trusting(key))


def _rewrite_tag(store_dir: Path, body: bytes) -> None:
    with sqlite3.connect(store_dir / "registry.db") as db:
        db.execute("UPDATE tags SET body = ?", (body,))


def test_a_tampered_tag_wrong_signer_and_unsigned_tags_are_refused(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    signed, unsigned = reg.slug("alice/app:0.1.0"), reg.slug("alice/app:0.2.0")
    publish(reg.client(), signed, make_package(tmp_path / "pkg"), key)
    publish(reg.client(), unsigned, make_package(tmp_path / "pkg2", config='args = ["x"]\n'))
    with pytest.raises(PackageRefused, match="not a publisher the policy trusts"):
        fetch_package(signed, reg.trust(), trusting(generate_key()))
    with pytest.raises(PackageRefused, match="not signed, and the policy accepts signed tags only"):
        fetch_package(unsigned, reg.trust(), trusting(key))
    assert fetch_package(unsigned, reg.trust(), RegistryPolicy(allow_unsigned=True)).signer is None

    # The registry's operator points the signed tag at the other tree, keeping the signature.
    value = json.loads(raw_request(reg, "GET", signed.route("tag").url_path())[2])
    other = raw_request(reg, "GET", unsigned.route("tag").url_path())[2]
    value["payload"] = base64.urlsafe_b64encode(other).rstrip(b"=").decode()
    _rewrite_tag(reg.store_dir, canonical_json(value))
    with pytest.raises(PackageRefused, match="does not verify"):
        fetch_package(signed, reg.trust(), trusting(key))


def test_paths_that_escape_are_refused(start_registry) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    for path in ("/alice/app/_tag/0.1.0/tree/../../../../etc/passwd", "/alice/app/_tag/..", "/alice/../x",
                 "/alice/app/_tag/0.1.0/tree/%2e%2e/x"):
        for method in ("GET", "PUT"):
            status, _, body = raw_request(reg, method, API_PREFIX + path, b"x" if method == "PUT" else None)
            assert (status, json.loads(body)["code"]) == (400, "bad_path"), (method, path)


def test_a_directory_naming_an_escape_is_refused(start_registry) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    evil = canonical_json({"..": Meta.of(b"x", "text/plain").to_json()})
    root = Meta.of(evil, DIRECTORY_TYPE)
    tag = reg.slug("alice/app:0.1.0")
    entry = Entry(root).json_bytes()
    status, _, _ = raw_request(reg, "PUT", tag.route("tag").url_path(), entry,
                               entry_headers(entry))
    assert status == 201
    status, _, body = raw_request(reg, "PUT", tag.route("tree").url_path(), evil,
                                  {"Content-Type": DIRECTORY_TYPE, "Content-Digest": root.content_digest})
    assert status == 400 and "not '.' or '..'" in json.loads(body)["error"]
    assert raw_request(reg, "GET", tag.route("tag").url_path())[0] == 404


def test_oversized_uploads_are_refused(start_registry, tmp_path: Path, key) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry(limits=StoreLimits(max_blob=1 << 20, max_package=3 << 20))
    reg.register()
    with pytest.raises(RegistryError, match="at most 1048576") as caught:
        publish(reg.client(), reg.slug("alice/app:0.1.0"), make_package(tmp_path / "a", wasm=padded_wasm(2 << 20)), key)
    assert caught.value.status == 413
    many = {f"part{n}": bytes(1000) * 1000 for n in range(4)}  # four 1 MB files: 4 MB in all
    with pytest.raises(RegistryError, match="more than 3145728 bytes"):
        publish(reg.client(), reg.slug("alice/app:0.2.0"), make_package(tmp_path / "b", extra=many), key)
    huge = b"{" + b" " * (70 << 10) + b"}"
    status, _, _ = raw_request(reg, "PUT", reg.slug("alice/app:0.3.0").route("tag").url_path(), huge,
                               entry_headers(huge))
    assert status == 413
    assert json.loads(raw_request(reg, "GET", reg.slug("alice/app:0.1.0").route("tags").url_path())[2]) == []


def test_writes_need_the_token(start_registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    for token in (None, "wrong-token-0123456789"):
        with pytest.raises(RegistryError, match="bearer token") as caught:
            publish(reg.client(token=token), reg.slug("alice/app:0.1.0"), make_package(tmp_path / "pkg"))
        assert caught.value.status == 401


def test_the_drawbridge_client_s_requests_work_as_they_are(start_registry) -> None:  # type: ignore[no-untyped-def]
    # Drawbridge's app test: a repository, an unsigned tag whose tree is one text/plain file.
    reg = start_registry(token=None)
    for path, value in (("/user", {"subject": "user"}), ("/user/foo", {"public": True})):
        body = canonical_json(value)
        assert raw_request(reg, "PUT", API_PREFIX + path, body, {"Content-Type": JSON_TYPE})[0] == 201
    assert raw_request(reg, "GET", API_PREFIX + "/user/foo/_tag")[2] == b"[]"
    root = Meta.of(b"testing", "text/plain")
    entry = Entry(root).json_bytes()
    status, _, _ = raw_request(reg, "PUT", API_PREFIX + "/user/foo/_tag/0.1.0", entry,
                               entry_headers(entry))
    assert status == 201
    assert raw_request(reg, "GET", API_PREFIX + "/user/foo/_tag/0.1.0")[0] == 404  # pending: no tree yet
    status, _, _ = raw_request(reg, "PUT", API_PREFIX + "/user/foo/_tag/0.1.0/tree/", b"testing",
                               {"Content-Type": "text/plain", "Content-Digest": root.content_digest})
    assert status == 201
    status, headers, body = raw_request(reg, "GET", API_PREFIX + "/user/foo/_tag/0.1.0/tree")
    assert (status, body, headers["content-type"]) == (200, b"testing", "text/plain")
    assert headers["content-digest"] == root.content_digest
    assert raw_request(reg, "GET", API_PREFIX + "/user/foo/_tag")[2] == b'["0.1.0"]'


def test_methods_and_routes_outside_the_api_are_refused_as_json(start_registry) -> None:  # type: ignore[no-untyped-def]
    reg = start_registry()
    reg.register()
    for method, path, status in (("DELETE", "/alice/app", 405), ("POST", "/alice", 405),
                                 ("PUT", "/alice/app/_tag", 405), ("GET", "/nobody/app/_tag", 404)):
        got, _, body = raw_request(reg, method, API_PREFIX + path, b"" if method != "GET" else None)
        assert got == status and "error" in json.loads(body), (method, path)
    got, _, body = raw_request(reg, "GET", "/api/v9/alice")
    assert got == 404 and json.loads(body)["code"] == "bad_path"
    got, headers, body = raw_request(reg, "HEAD", API_PREFIX + "/alice/app")
    assert (got, body) == (200, b"") and headers["content-length"] == str(len(b'{"public":true}'))
