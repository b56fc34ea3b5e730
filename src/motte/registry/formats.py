"""Drawbridge's wire formats (API v0.1.0), as the registry server and its client both read and
write them. Pure: no I/O.

A package is a *tree*: a file, or a directory whose JSON lists its children's *entries*. An entry
is a node's ``Meta`` (its content digests, length and media type) plus any extra fields::

    {"digest":{"sha-224":"…","sha-256":"…","sha-384":"…","sha-512":"…"},"length":123,"type":"application/wasm"}

compact JSON, the keys in that order, each digest the standard base64 (with padding) of the
algorithm's hash of the node's bytes. A directory is the compact JSON object of its entries by
name, sorted by name. A *tag* names a tree by its root entry, or by a JWS over that entry
(:mod:`motte.registry.signing`). Every node travels with its Meta as HTTP headers:
``Content-Type``, ``Content-Length`` and ``Content-Digest`` (``sha-256=:<base64>:,…``).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from motte.shared.errors import MotteError

API_VERSION = "0.1.0"
API_PREFIX = f"/api/v{API_VERSION}"

ENTRY_TYPE = "application/vnd.drawbridge.entry.v1+json"
DIRECTORY_TYPE = "application/vnd.drawbridge.directory.v1+json"
JWS_TYPE = "application/jose+json"
WASM_TYPE = "application/wasm"
TOML_TYPE = "application/toml"
OCTET_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"

#: Drawbridge's digest algorithms, in its order (which is also their names' order).
ALGORITHMS: dict[str, Callable[[], Any]] = {
    "sha-224": hashlib.sha224,
    "sha-256": hashlib.sha256,
    "sha-384": hashlib.sha384,
    "sha-512": hashlib.sha512,
}
DIGEST_SIZES = {"sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
#: An entry must carry at least one of these: SHA-224 alone is not what a package is pinned by.
STRONG_ALGORITHMS = ("sha-256", "sha-384", "sha-512")

MAX_NAME = 128
MAX_ENTRY_NAME = 255
MAX_TYPE = 255

_USER = re.compile(r"[0-9A-Za-z]+")
_REPO = re.compile(r"[0-9A-Za-z-]+")
_ENTRY_NAME = re.compile(r"[0-9A-Za-z._-]+")
# Semantic Versioning 2.0.0: a tag is a version (so never "." or "..").
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(?:\s*;[ -~]*)?", re.ASCII)
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?")

Digests = dict[str, bytes]  # algorithm name -> raw digest
TreePath = tuple[str, ...]  # () is the root


class FormatError(MotteError):
    """Something on the wire is not what Drawbridge's formats allow; the message says what."""


# --- names ---------------------------------------------------------------------------------------
def check_user(name: str) -> str:
    if not (len(name) <= MAX_NAME and _USER.fullmatch(name)):
        raise FormatError(f"invalid user name {name!r}: letters and digits only, at most {MAX_NAME}")
    return name


def check_repo(name: str) -> str:
    if not (len(name) <= MAX_NAME and _REPO.fullmatch(name)):
        raise FormatError(f"invalid repository name {name!r}: letters, digits and '-' only, at most {MAX_NAME}")
    return name


def check_tag(name: str) -> str:
    if not (len(name) <= MAX_NAME and _SEMVER.fullmatch(name)):
        raise FormatError(f"invalid tag {name!r}: a tag is a semantic version, e.g. 0.1.0")
    return name


def check_entry_name(name: str) -> str:
    """A name in a directory: letters, digits, '.', '-', '_'; never '.' or '..' (which would
    name a directory itself or its parent, escaping the tree)."""
    if not (len(name) <= MAX_ENTRY_NAME and _ENTRY_NAME.fullmatch(name)) or name in (".", ".."):
        raise FormatError(f"invalid name in a tree {name!r}: letters, digits, '.', '-' and '_' only, "
                          "and not '.' or '..'")
    return name


def check_media_type(value: str) -> str:
    if not (len(value) <= MAX_TYPE and _MEDIA_TYPE.fullmatch(value)):
        raise FormatError(f"invalid media type {value[:80]!r}")
    return value


def semver_key(tag: str) -> tuple[Any, ...]:
    """Sort key for tags in Semantic Versioning precedence (build metadata ignored)."""
    match = _SEMVER.fullmatch(tag)
    if match is None:
        return ((), tag)
    major, minor, patch, pre = int(match[1]), int(match[2]), int(match[3]), match[4]
    if pre is None:
        return ((major, minor, patch, 1), (), tag)
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return ((major, minor, patch, 0), ids, tag)


# --- content digests -----------------------------------------------------------------------------
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
PARALLEL_CHUNK = 256 << 10


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(len(ALGORITHMS), thread_name_prefix="digest")
    return _POOL


class Hasher:
    """Every algorithm's digest of a stream, and its length. Large chunks are hashed by each
    algorithm in a thread of its own (hashlib lets go of the GIL): the four SHA-2s of a 26 MB
    module cost ~350 ms of CPU one after another, about half that on two cores."""

    def __init__(self, algorithms: tuple[str, ...] = tuple(ALGORITHMS)) -> None:
        self._hashes = [ALGORITHMS[name]() for name in algorithms]
        self._names = algorithms
        self.length = 0

    def update(self, chunk: bytes | memoryview) -> None:
        if len(chunk) >= PARALLEL_CHUNK and len(self._hashes) > 1:
            for future in [_pool().submit(h.update, chunk) for h in self._hashes]:
                future.result()
        else:
            for h in self._hashes:
                h.update(chunk)
        self.length += len(chunk)

    def digests(self) -> Digests:
        return {name: h.digest() for name, h in zip(self._names, self._hashes, strict=True)}


def compute_digests(data: bytes) -> Digests:
    hasher = Hasher()
    hasher.update(data)
    return hasher.digests()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str, algorithm: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise FormatError(f"{algorithm}: not base64") from None
    if len(raw) != DIGEST_SIZES[algorithm]:
        raise FormatError(f"{algorithm}: {len(raw)} bytes, not {DIGEST_SIZES[algorithm]}")
    return raw


def _algorithm(name: str) -> str:
    algorithm = name.strip().lower()
    if algorithm not in ALGORITHMS:
        raise FormatError(f"unknown digest algorithm {name[:40]!r} (known: {', '.join(ALGORITHMS)})")
    return algorithm


def parse_content_digest(header: str) -> Digests:
    """``sha-256=:<base64>:,sha-384=:<base64>:`` (a ``Content-Digest`` header) -> digests."""
    digests: Digests = {}
    for item in header.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq or len(value) < 2 or not (value.startswith(":") and value.endswith(":")):
            raise FormatError(f"Content-Digest: expected ALGORITHM=:BASE64:, not {item.strip()[:60]!r}")
        algorithm = _algorithm(name)
        digests[algorithm] = _unb64(value[1:-1], algorithm)
    return digests


def format_content_digest(digests: Mapping[str, bytes]) -> str:
    return ",".join(f"{name}=:{_b64(digests[name])}:" for name in sorted(digests))


def digests_match(expected: Mapping[str, bytes], actual: Mapping[str, bytes]) -> bool:
    """Every algorithm ``expected`` names has the same value in ``actual`` (``actual`` may have more)."""
    return bool(expected) and all(actual.get(name) == value for name, value in expected.items())


# --- Meta and entries ----------------------------------------------------------------------------
def canonical_json(value: Any) -> bytes:
    """Compact JSON as serde_json writes it: no whitespace, non-ASCII as UTF-8, keys in the given order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def load_json(data: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no duplicate keys (two readers could see different values), no NaN."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise FormatError(f"{what}: duplicate key {key[:60]!r}")
            out[key] = value
        return out

    def no_constant(name: str) -> Any:
        raise FormatError(f"{what}: {name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=no_constant)
    except UnicodeDecodeError:
        raise FormatError(f"{what}: not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{what}: not JSON: {exc}") from None


@dataclass(frozen=True)
class Meta:
    """What identifies a node's content: its digests, its length in bytes, its media type."""

    digest: Mapping[str, bytes]
    length: int
    type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": {name: _b64(self.digest[name]) for name in sorted(self.digest)},
                "length": self.length, "type": self.type}

    def json_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def content_digest(self) -> str:
        return format_content_digest(self.digest)

    @property
    def is_directory(self) -> bool:
        return self.type == DIRECTORY_TYPE

    @classmethod
    def of(cls, data: bytes, media_type: str) -> Meta:
        return cls(compute_digests(data), len(data), media_type)

    @classmethod
    def from_json(cls, value: Any, what: str = "entry") -> Meta:
        if not isinstance(value, dict):
            raise FormatError(f"{what}: expected a JSON object")
        digest, length, media_type = value.get("digest"), value.get("length"), value.get("type")
        if not isinstance(digest, dict) or not digest:
            raise FormatError(f"{what}: \"digest\" must be an object of at least one algorithm")
        digests: Digests = {}
        for name, text in digest.items():
            algorithm = _algorithm(name)
            if not isinstance(text, str):
                raise FormatError(f"{what}: digest {algorithm}: expected a base64 string")
            digests[algorithm] = _unb64(text, algorithm)
        if not any(name in digests for name in STRONG_ALGORITHMS):
            raise FormatError(f"{what}: no digest of {', '.join(STRONG_ALGORITHMS)}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise FormatError(f"{what}: \"length\" must be a whole number of bytes")
        if not isinstance(media_type, str):
            raise FormatError(f"{what}: \"type\" must be a media type")
        return cls(digests, length, check_media_type(media_type))


META_KEYS = ("digest", "length", "type")


@dataclass(frozen=True)
class Entry:
    """A node's entry in its directory (or a tag's): its Meta, and any other fields, kept as they are."""

    meta: Meta
    custom: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.meta.to_json(), **{k: self.custom[k] for k in sorted(self.custom) if k not in META_KEYS}}

    def json_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: Any, what: str = "entry") -> Entry:
        meta = Meta.from_json(value, what)
        return cls(meta, {k: v for k, v in value.items() if k not in META_KEYS})

    @classmethod
    def parse(cls, data: bytes, what: str = "entry") -> Entry:
        return cls.from_json(load_json(data, what), what)


Directory = dict[str, Entry]


def directory_bytes(entries: Mapping[str, Entry]) -> bytes:
    return canonical_json({name: entries[name].to_json() for name in sorted(entries)})


def parse_directory(data: bytes, max_entries: int, what: str = "directory") -> Directory:
    value = load_json(data, what)
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected a JSON object of entries")
    if len(value) > max_entries:
        raise FormatError(f"{what}: {len(value)} entries, more than the {max_entries} allowed")
    return {check_entry_name(name): Entry.from_json(entry, f"{what}: {name}") for name, entry in value.items()}


# --- paths of the API ----------------------------------------------------------------------------
RouteKind = Literal["user", "repo", "tags", "tag", "tree"]


@dataclass(frozen=True)
class Route:
    """What a path under :data:`API_PREFIX` names."""

    kind: RouteKind
    user: str
    repo: str = ""
    tag: str = ""
    path: TreePath = ()

    def url_path(self) -> str:
        parts = [API_PREFIX, self.user]
        if self.kind != "user":
            parts.append(self.repo)
        if self.kind == "tags":
            parts.append("_tag")
        if self.kind in ("tag", "tree"):
            parts += ["_tag", self.tag]
        if self.kind == "tree":
            parts.append("tree" + "".join("/" + name for name in self.path))
        return "/".join(parts)


def parse_tree_path(text: str) -> TreePath:
    """``""``, ``"/"``, ``"/a/b"`` (a trailing ``/`` allowed) -> the names, each checked."""
    if text in ("", "/"):
        return ()
    if not text.startswith("/"):
        raise FormatError(f"invalid tree path {text[:80]!r}")
    names = text[1:].removesuffix("/").split("/")
    return tuple(check_entry_name(name) for name in names)


def parse_route(path: str) -> Route:
    """The raw (still percent-encoded) request path -> its route. Anything percent-encoded, an
    empty segment, '.' or '..' is refused: a name is what its bytes say, nothing is decoded."""
    path = path.partition("?")[0]
    if not path.startswith(API_PREFIX + "/"):
        raise FormatError(f"not under {API_PREFIX}/")
    if "%" in path:
        raise FormatError("percent-encoded paths are not accepted: names are letters, digits, '.', '-', '_'")
    head, sep, tail = path[len(API_PREFIX) + 1:].partition("/_")
    user, _, repo = head.removesuffix("/").partition("/")
    check_user(user)
    if not sep:
        return Route("user", user) if not repo else Route("repo", user, check_repo(repo))
    check_repo(repo)
    if tail == "tag" or tail == "tag/":
        return Route("tags", user, repo)
    if not tail.startswith("tag/"):
        raise FormatError(f"unknown route /_{tail.split('/', 1)[0][:40]}")
    tag, _, rest = tail[4:].partition("/")
    check_tag(tag)
    if not rest:
        return Route("tag", user, repo, tag)
    if rest != "tree" and not rest.startswith("tree/"):
        raise FormatError(f"unknown route under the tag: {rest[:40]!r}")
    return Route("tree", user, repo, tag, parse_tree_path(rest[4:]))


# --- slugs: [host/]user/repo:tag -----------------------------------------------------------------
@dataclass(frozen=True)
class Slug:
    host: str
    user: str
    repo: str = ""
    tag: str = ""

    @property
    def name(self) -> str:
        """``user/repo``: what a signed tag names, wherever it is served from."""
        return f"{self.user}/{self.repo}"

    @property
    def tag_name(self) -> str:
        return f"{self.user}/{self.repo}:{self.tag}"

    def __str__(self) -> str:
        text = f"{self.host}/{self.user}"
        text += f"/{self.repo}" if self.repo else ""
        return text + (f":{self.tag}" if self.tag else "")

    def route(self, kind: RouteKind, path: TreePath = ()) -> Route:
        return Route(kind, self.user, self.repo, self.tag, path)


def _host(host: str | None, slug: str) -> str:
    if not host:
        raise FormatError(f"{slug!r} names no registry host", hint="write HOST/USER/... or set MOTTE_REGISTRY")
    if not _HOST.fullmatch(host):
        raise FormatError(f"invalid registry host {host[:80]!r} in {slug[:120]!r}", hint="HOST or HOST:PORT")
    return host


def parse_user_slug(text: str, default_host: str | None = None) -> Slug:
    host, _, user = text.rpartition("/")
    return Slug(_host(host or default_host, text), check_user(user))


def parse_repo_slug(text: str, default_host: str | None = None) -> Slug:
    head, sep, repo = text.rpartition("/")
    if not sep:
        raise FormatError(f"{text[:120]!r} is not [HOST/]USER/REPO")
    user = parse_user_slug(head, default_host)
    return Slug(user.host, user.user, check_repo(repo))


def parse_tag_slug(text: str, default_host: str | None = None) -> Slug:
    """Enarx's package slug ``[HOST/]USER/REPO:TAG``, split from the right as Enarx does."""
    head, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        raise FormatError(f"{text[:120]!r} is not [HOST/]USER/REPO:TAG",
                          hint="e.g. registry.example:8443/alice/app:0.1.0")
    repo = parse_repo_slug(head, default_host)
    return Slug(repo.host, repo.user, repo.repo, check_tag(tag))
