"""The registry's HTTP API on aiohttp: Drawbridge's routes (API v0.1.0), under ``/api/v0.1.0``.

    HEAD|GET|PUT  /{user}                              a user record {"subject": ...}
    HEAD|GET|PUT  /{user}/{repo}                       a repository config {"public": bool}
    HEAD|GET      /{user}/{repo}/_tag                  the published tags, a JSON list
    HEAD|GET|PUT  /{user}/{repo}/_tag/{tag}            a tag entry (the root entry, or a JWS over it)
    HEAD|GET|PUT  /{user}/{repo}/_tag/{tag}/tree[/p]   a node of the tag's tree

Every answer with a body carries its Meta as ``Content-Type``, ``Content-Length`` and
``Content-Digest``. A PUT must carry them too; its body is checked against them and against what
the tree says the node is, as it streams to disk. Refusals are ``{"error", "code"}`` JSON.

Who may do what: a PUT needs the bearer token when the server has one; a public repository is
readable by anyone; a private one by the token's holder, or by a client presenting a certificate
issued by a Steward this registry trusts (TLS checks the chain; this checks what it attests).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler as AiohttpHandler
from cryptography import x509

from motte.outside.http_errors import ApiError, json_errors
from motte.registry.formats import (
    API_PREFIX,
    ENTRY_TYPE,
    JSON_TYPE,
    JWS_TYPE,
    STRONG_ALGORITHMS,
    Entry,
    FormatError,
    Hasher,
    Meta,
    Route,
    canonical_json,
    compute_digests,
    digests_match,
    format_content_digest,
    load_json,
    parse_content_digest,
    parse_route,
)
from motte.registry.signing import SignatureError, check_signature, parse_signed_tag
from motte.registry.store import Store, Stored
from motte.shared.printable import printable
from motte.shared.steward_certs import read_attestation
from motte.shared.steward_protocol import StewardProtocolError

CHUNK = 1 << 20
IDLE_TIMEOUT = 30.0  # seconds a client may send nothing in the middle of a body

Log = Callable[[str], None]
Handler = Callable[[web.Request, Route], Awaitable[web.StreamResponse]]


def stderr_log(text: str) -> None:
    sys.stderr.write(f"motte registry: {text}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Access:
    token: str | None = None  # PUTs need it (and it reads private repositories)
    steward_readers: bool = False  # a Steward-issued client certificate reads private repositories
    allow_unattested_readers: bool = False  # ... even one the Steward issued without evidence


class Registry:
    """The service over an open :class:`Store`. Run it with :func:`motte.registry.server.serve`."""

    def __init__(self, store: Store, access: Access | None = None, *, idle_timeout: float = IDLE_TIMEOUT,
                 log: Log = stderr_log) -> None:
        self.store = store
        self.access = access or Access()
        self.idle_timeout = idle_timeout
        self.log = log

    def app(self) -> web.Application:
        # The host agent's refusals: {"error", "code"} JSON, and one log line each (client text escaped).
        app = web.Application(middlewares=[_cut_off_unread_bodies, json_errors(self.log)])
        app.router.add_route("*", "/api/v{version}/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if not request.raw_path.startswith(API_PREFIX + "/"):
            raise ApiError(404, "bad_path", f"this registry speaks Drawbridge's API under {API_PREFIX}/")
        try:
            route = parse_route(request.raw_path)
        except FormatError as exc:
            raise ApiError(400, "bad_path", str(exc)) from None
        readers: dict[str, Handler] = {"user": self.get_user, "repo": self.get_repo, "tags": self.get_tags,
                                       "tag": self.get_tag, "tree": self.get_tree}
        writers: dict[str, Handler] = {"user": self.put_user, "repo": self.put_repo, "tag": self.put_tag,
                                       "tree": self.put_tree}
        if request.method in ("HEAD", "GET"):
            if route.kind != "user":
                self._check_read(request, route)
            return await readers[route.kind](request, route)
        if request.method == "PUT" and route.kind in writers:
            self._check_token(request, "publishing")
            return await writers[route.kind](request, route)
        allowed = "HEAD, GET" + (", PUT" if route.kind in writers else "")
        raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here ({allowed} are)")

    # --- who may ---
    def _has_token(self, request: web.Request) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = self.access.token
        return token is not None and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                                         token.encode())

    def _check_token(self, request: web.Request, what: str) -> None:
        if self.access.token is not None and not self._has_token(request):
            raise ApiError(401, "unauthorized", f"{what} needs this registry's bearer token",
                           headers={"WWW-Authenticate": 'Bearer realm="motte registry"'})

    def _check_read(self, request: web.Request, route: Route) -> None:
        found = self.store.get_repo(route.user, route.repo)
        if found is None:
            raise ApiError(404, "no_such_repo", f"no repository {route.user}/{route.repo}")
        if found[1] or self._has_token(request):
            return
        der = _peer_certificate(request)
        if der is None or not self.access.steward_readers:
            raise ApiError(401, "private_repo", f"{route.user}/{route.repo} is private: only a keep with a "
                           "certificate from a Steward this registry trusts (or the token's holder) may read it")
        try:
            attestation = read_attestation(x509.load_der_x509_certificate(der))
        except (ValueError, StewardProtocolError) as exc:
            raise ApiError(403, "bad_certificate", f"the client certificate cannot be read: {exc}") from None
        if not attestation.attested and not self.access.allow_unattested_readers:
            raise ApiError(403, "unattested_reader", "the client certificate says its keep was not attested; "
                           "this registry serves private repositories to attested keeps only")

    # --- users and repositories ---
    async def get_user(self, request: web.Request, route: Route) -> web.Response:
        return _document(self.store.get_user(route.user), f"no user {route.user}")

    async def put_user(self, request: web.Request, route: Route) -> web.Response:
        doc, value = await self._json_put(request, JSON_TYPE, "user record")
        if not (isinstance(value, dict) and set(value) == {"subject"} and isinstance(value["subject"], str)):
            raise ApiError(400, "bad_field", 'a user record is {"subject": "..."}')
        created = self.store.put_user(route.user, doc)
        self._event(created, f"user {route.user} registered")
        return web.Response(status=201 if created else 200)

    async def get_repo(self, request: web.Request, route: Route) -> web.Response:
        found = self.store.get_repo(route.user, route.repo)
        return _document(found[0] if found else None, f"no repository {route.user}/{route.repo}")

    async def put_repo(self, request: web.Request, route: Route) -> web.Response:
        doc, value = await self._json_put(request, JSON_TYPE, "repository config")
        if not (isinstance(value, dict) and set(value) == {"public"} and isinstance(value["public"], bool)):
            raise ApiError(400, "bad_field", 'a repository config is {"public": true|false}')
        created = self.store.put_repo(route.user, route.repo, doc, value["public"])
        self._event(created, f"repository {route.user}/{route.repo} registered "
                    f"({'public' if value['public'] else 'private'})")
        return web.Response(status=201 if created else 200)

    async def get_tags(self, request: web.Request, route: Route) -> web.Response:
        body = canonical_json(self.store.tags(route.user, route.repo))
        return _document(Stored(body, JSON_TYPE, format_content_digest(compute_digests(body))), "")

    # --- tags ---
    async def get_tag(self, request: web.Request, route: Route) -> web.Response:
        return _document(self.store.get_tag(route.user, route.repo, route.tag),
                         f"no tag {route.user}/{route.repo}:{route.tag}")

    async def put_tag(self, request: web.Request, route: Route) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        if content_type not in (ENTRY_TYPE, JWS_TYPE):
            raise ApiError(415, "bad_content_type", f"a tag entry is {ENTRY_TYPE} or {JWS_TYPE}")
        if "Content-Digest" not in request.headers:
            raise ApiError(400, "no_digest", "a tag entry needs a Content-Digest")
        doc, _ = await self._json_put(request, content_type, "tag entry")
        tag_name = f"{route.user}/{route.repo}:{route.tag}"
        try:
            if content_type == ENTRY_TYPE:
                root = Entry.parse(doc.body, "tag entry")
            else:
                signed = parse_signed_tag(doc.body)
                for signature in signed.signatures:
                    if signature.jwk is not None:
                        check_signature(signature)
                    if signature.tag_name not in (None, tag_name):
                        raise SignatureError(f"the tag entry is signed for {signature.tag_name}, not {tag_name}")
                root = signed.entry
        except (FormatError, SignatureError) as exc:
            raise ApiError(400, "bad_tag", str(exc)) from None
        created = self.store.begin_tag(route.user, route.repo, route.tag, doc, root)
        if created:
            self.log(f"publishing {printable(tag_name)}: tag entry received "
                     f"({'signed' if content_type == JWS_TYPE else 'unsigned'}), waiting for its tree")
        return web.Response(status=201 if created else 200)

    # --- tree nodes ---
    async def get_tree(self, request: web.Request, route: Route) -> web.StreamResponse:
        node = self.store.get_node(route.user, route.repo, route.tag, route.path)
        if node is None:
            raise ApiError(404, "not_found",
                           f"no node /{'/'.join(route.path)} in {route.user}/{route.repo}:{route.tag}")
        response = web.StreamResponse(headers={"Content-Type": node.meta.type,
                                               "Content-Digest": node.meta.content_digest})
        response.content_length = node.meta.length
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await self._send_verified(request, response, node.blob, node.meta)
        return response

    async def _send_verified(self, request: web.Request, response: web.StreamResponse, blob: Path, meta: Meta) -> None:
        """Stream the blob, holding back its last chunk until its digest is checked: a blob that
        changed on disk is never sent whole (the connection is cut, and the client sees it short)."""
        hasher = Hasher(("sha-256",))
        held = b""
        with blob.open("rb") as file:
            while chunk := file.read(CHUNK):
                if held:
                    await response.write(held)
                hasher.update(chunk)
                held = chunk
        if hasher.length != meta.length or hasher.digests()["sha-256"].hex() != blob.name:
            self.log(f"CORRUPT blob {blob}: its content does not match its digest; not served")
            if request.transport is not None:
                request.transport.abort()
            return
        await response.write(held)
        await response.write_eof()

    async def put_tree(self, request: web.Request, route: Route) -> web.Response:
        claimed = _claimed_meta(request)
        expected, stored = self.store.expected_node(route.user, route.repo, route.tag, route.path)
        where = f"/{'/'.join(route.path)} of {route.user}/{route.repo}:{route.tag}"
        if claimed.type != expected.type or claimed.length != expected.length:
            raise ApiError(400, "meta_mismatch", f"{where} must be {expected.length} bytes of "
                           f"{expected.type}, not {claimed.length} of {printable(claimed.type, 80)}")
        if any(expected.digest.get(name, value) != value for name, value in claimed.digest.items()):
            raise ApiError(400, "digest_mismatch", f"the Content-Digest of {where} is not its digest in the tree")
        if stored:  # (a publisher resuming): read what it sends, keep nothing
            await self._receive(request, expected, claimed, where, keep=False)
            return web.Response(status=200)
        blob = await self._receive(request, expected, claimed, where)
        published = self.store.commit_node(route.user, route.repo, route.tag, route.path, expected, blob)
        if published:
            self.log(f"published {route.user}/{route.repo}:{route.tag}")
        return web.Response(status=201)

    async def _receive(self, request: web.Request, expected: Meta, claimed: Meta, where: str, *,
                       keep: bool = True) -> str:
        """Stream the body to a new blob, checking every digest; returns its SHA-256 (hex).
        (``keep=False``: only read it, for a node that is stored already.)"""
        algorithms = tuple(sorted({*expected.digest, *claimed.digest, "sha-256"}))
        hasher = Hasher(algorithms)
        upload = self.store.new_upload()
        received = 0
        pending = bytearray()
        try:
            with upload.open("wb") as file:
                while received < expected.length:
                    try:
                        chunk = await asyncio.wait_for(request.content.read(CHUNK), self.idle_timeout)
                    except TimeoutError:
                        raise ApiError(408, "timeout", f"{where}: nothing arrived for {self.idle_timeout:g} s "
                                       f"({received} of {expected.length} bytes came)") from None
                    received += len(chunk)
                    pending += chunk
                    if len(pending) >= CHUNK or not chunk or received >= expected.length:
                        # Hashed off the event loop (which serves others meanwhile), in large pieces.
                        await asyncio.to_thread(hasher.update, bytes(pending))
                        if keep:
                            file.write(pending)
                        pending.clear()
                    if not chunk:
                        break
                if hasher.length != expected.length:
                    raise ApiError(400, "length_mismatch",
                                   f"{where}: {hasher.length} bytes came, not {expected.length}")
                digests = hasher.digests()
                if not (digests_match(expected.digest, digests) and digests_match(claimed.digest, digests)):
                    raise ApiError(400, "digest_mismatch", f"{where}: the bytes that came do not have their digest")
                if keep:
                    file.flush()
                    await asyncio.to_thread(os.fsync, file.fileno())
            sha256 = digests["sha-256"].hex()
            if keep:
                await asyncio.to_thread(self.store.commit_blob, upload, sha256)
            return sha256
        finally:
            upload.unlink(missing_ok=True)

    # --- helpers ---
    async def _json_put(self, request: web.Request, content_type: str, what: str) -> tuple[Stored, Any]:
        given = request.headers.get("Content-Type", "")
        if given != content_type:
            raise ApiError(415, "bad_content_type", f"a {what} is {content_type}, not {printable(given, 80) or 'none'}")
        body = await self._read_small(request, what)
        digests = compute_digests(body)
        if "Content-Digest" in request.headers:
            claimed = _parse_digest(request.headers["Content-Digest"])
            if not digests_match(claimed, digests):
                raise ApiError(400, "digest_mismatch", f"the {what} does not have the Content-Digest it came with")
        try:
            value = load_json(body, what)
        except FormatError as exc:
            raise ApiError(400, "bad_json", str(exc)) from None
        return Stored(body, content_type, format_content_digest(digests)), value

    async def _read_small(self, request: web.Request, what: str) -> bytes:
        limit = self.store.limits.max_json
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, "body_too_large", f"a {what} is at most {limit} bytes")
        buf = bytearray()
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.read(limit + 1), self.idle_timeout)
            except TimeoutError:
                raise ApiError(408, "timeout", f"the {what} did not arrive within {self.idle_timeout:g} s") from None
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise ApiError(413, "body_too_large", f"a {what} is at most {limit} bytes")

    def _event(self, created: bool, text: str) -> None:
        if created:
            self.log(text)


def _parse_digest(header: str) -> dict[str, bytes]:
    try:
        return parse_content_digest(header)
    except FormatError as exc:
        raise ApiError(400, "bad_digest", str(exc)) from None


def _claimed_meta(request: web.Request) -> Meta:
    """The Meta a PUT of a node comes with: Content-Type, Content-Length and Content-Digest."""
    content_type = request.headers.get("Content-Type")
    if not content_type:
        raise ApiError(400, "no_content_type", "a node needs a Content-Type")
    if request.content_length is None:
        raise ApiError(411, "length_required", "a node needs a Content-Length (no chunked uploads)")
    if "Content-Digest" not in request.headers:
        raise ApiError(400, "no_digest", "a node needs a Content-Digest")
    digests = _parse_digest(request.headers["Content-Digest"])
    if not any(name in digests for name in STRONG_ALGORITHMS):
        raise ApiError(400, "bad_digest", f"the Content-Digest needs one of {', '.join(STRONG_ALGORITHMS)}")
    return Meta(digests, request.content_length, content_type)


def _document(doc: Stored | None, missing: str) -> web.Response:
    if doc is None:
        raise ApiError(404, "not_found", missing)
    return web.Response(body=doc.body, headers={"Content-Type": doc.type, "Content-Digest": doc.digest})


def _peer_certificate(request: web.Request) -> bytes | None:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    return None if ssl_object is None else ssl_object.getpeercert(binary_form=True)


@web.middleware
async def _cut_off_unread_bodies(request: web.Request, handler: AiohttpHandler) -> web.StreamResponse:
    """A refused upload that stalled, is too large or has no length: the rest of its body is not
    worth reading (other refusals are drained, so the client can read the answer)."""
    response = await handler(request)
    if response.status in (408, 411, 413):
        response.force_close()
    return response
