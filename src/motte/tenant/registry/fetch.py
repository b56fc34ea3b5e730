"""Fetching a package by name: the tag, its signature against the tenant's policy, then the tree,
every node checked against the entry that names it, before any of it is used.

The chain of trust: the policy names publisher keys; a trusted publisher's signature covers the
root entry (and names the tag); the root entry's digests cover the root directory's bytes; each
directory's entries cover their nodes' bytes. Nothing the registry says beyond the signed root is
believed: headers that disagree with the tree, a byte too many or too few, or a digest that does
not match stop the fetch.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from motte.outside.enarx_toml import parse_enarx_toml
from motte.registry.formats import (
    ENTRY_TYPE,
    JWS_TYPE,
    TOML_TYPE,
    WASM_TYPE,
    Entry,
    FormatError,
    Hasher,
    Meta,
    Slug,
    TreePath,
    check_entry_name,
    digests_match,
    parse_directory,
)
from motte.registry.signing import SignatureError, parse_signed_tag, verify_signed_tag
from motte.shared.control import MAX_WASM_SIZE
from motte.shared.errors import MotteError
from motte.tenant.deploy.package import CONFIG_NAME, MAIN_WASM, Package, load_package
from motte.tenant.registry.client import RegistryClient, RegistryError, RegistryTrust
from motte.tenant.registry.policy import RegistryPolicy

MAX_TAG_ENTRY = 64 << 10
MAX_NODES = 4096
MAX_DIRECTORY = 1 << 20
MAX_ENTRIES = 1024
MAX_TREE_BYTES = MAX_WASM_SIZE + (64 << 20)

#: progress(what, bytes done, bytes in all)
TreeProgress = Callable[[str, int, int], None]


class PackageRefused(MotteError):
    """The package is not one the tenant's policy accepts, or does not check out: a verdict, so
    exit status 1 (as a keep the policy refuses), not motte's own failure."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message, hint=hint, exit_code=1)


@dataclass(frozen=True)
class VerifiedTag:
    root: Entry
    signer: str | None  # a trusted publisher's key thumbprint; None for an unsigned tag
    signed_by: tuple[str, ...]  # every signature's kid, trusted or not


@dataclass(frozen=True)
class FetchedTree:
    slug: Slug
    tag: VerifiedTag
    files: dict[TreePath, bytes]  # every file node; {(): bytes} when the root is a file
    directories: tuple[TreePath, ...]
    metas: dict[TreePath, Meta]  # every node's, as its entry names it

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.files.values())


@dataclass(frozen=True)
class RegistryPackage:
    """What ``motte deploy HOST/USER/REPO:TAG`` deploys, and what it was fetched as."""

    package: Package
    slug: Slug  # host, user, repo, tag
    root: Meta  # the tree's root: its digests name the whole package
    signer: str | None


def check_tag(body: bytes, content_type: str, slug: Slug, policy: RegistryPolicy) -> VerifiedTag:
    """The root entry a tag names, if the policy accepts the tag (pure)."""
    try:
        if content_type == ENTRY_TYPE:
            root = Entry.parse(body, "tag entry")
            if not policy.allow_unsigned:
                raise PackageRefused(f"{slug} is not signed, and the policy accepts signed tags only",
                                     hint="ask its publisher to sign it, or set allow_unsigned = true")
            return VerifiedTag(root, None, ())
        if content_type != JWS_TYPE:
            raise PackageRefused(f"{slug}: a tag entry of type {content_type[:80]!r}")
        signed = parse_signed_tag(body)
        kids = tuple(signed.signers)
        if policy.allow_unsigned and not any(s.kid in policy.publishers for s in signed.signatures):
            return VerifiedTag(signed.entry, None, kids)  # as if unsigned: no trusted key signed it
        signer = verify_signed_tag(signed, policy.publishers, slug.tag_name)
        return VerifiedTag(signed.entry, signer, kids)
    except (FormatError, SignatureError) as exc:
        raise PackageRefused(f"{slug}: {exc}") from None


def fetch_tag(client: RegistryClient, slug: Slug, policy: RegistryPolicy) -> VerifiedTag:
    reply = client.request("GET", slug.route("tag"), limit=MAX_TAG_ENTRY)
    return check_tag(reply.body, reply.headers.get("content-type", ""), slug, policy)


def fetch_tree(client: RegistryClient, slug: Slug, policy: RegistryPolicy,
               progress: TreeProgress | None = None) -> FetchedTree:
    tag = fetch_tag(client, slug, policy)
    files: dict[TreePath, bytes] = {}
    directories: list[TreePath] = []
    metas: dict[TreePath, Meta] = {}
    queue: deque[tuple[TreePath, Meta]] = deque([((), tag.root.meta)])
    total = 0
    while queue:
        path, meta = queue.popleft()
        total += meta.length
        if total > MAX_TREE_BYTES or len(files) + len(directories) >= MAX_NODES:
            raise PackageRefused(f"{slug}: the tree is larger than a package may be "
                                 f"({MAX_NODES} nodes, {MAX_TREE_BYTES} bytes)")
        data = _fetch_node(client, slug, path, meta, progress)
        metas[path] = meta
        if not meta.is_directory:
            files[path] = data
            continue
        directories.append(path)
        try:
            entries = parse_directory(data, MAX_ENTRIES, f"{slug}: /{'/'.join(path)}")
        except FormatError as exc:
            raise PackageRefused(str(exc)) from None
        queue.extend(((*path, name), entry.meta) for name, entry in entries.items())
    return FetchedTree(slug, tag, files, tuple(directories), metas)


def _fetch_node(client: RegistryClient, slug: Slug, path: TreePath, meta: Meta,
                progress: TreeProgress | None) -> bytes:
    shown = "/" + "/".join(path)
    if meta.is_directory and meta.length > MAX_DIRECTORY:
        raise PackageRefused(f"{slug}: directory {shown} is larger than {MAX_DIRECTORY} bytes")
    hasher = Hasher(tuple(sorted(meta.digest)))
    buf = bytearray()

    def report(done: int, size: int) -> None:
        if progress is not None:
            progress(shown, done, size)

    for chunk in client.stream(slug.route("tree", path), meta, report):
        hasher.update(chunk)
        buf += chunk
    if not digests_match(meta.digest, hasher.digests()):
        raise PackageRefused(f"{slug}: {shown} does not have the digest its entry names: "
                             "the registry served other bytes than were published")
    return bytes(buf)


def write_tree(tree: FetchedTree, out: Path) -> list[Path]:
    """Write the tree's files under ``out`` (a folder that must not exist yet, or be empty);
    a tree whose root is a file is written as ``out/main.wasm``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise RegistryError(f"{out} is not empty", hint="fetch into a new folder")
        for path in tree.directories:
            (out.joinpath(*path)).mkdir(exist_ok=True)
        written = []
        for path, data in sorted(tree.files.items()):
            target = out.joinpath(*path) if path else out / MAIN_WASM
            target.write_bytes(data)
            written.append(target)
    except OSError as exc:
        raise RegistryError(f"cannot write the package under {out}: {exc.strerror or exc}") from None
    return written


def fetch_package(slug: Slug, trust: RegistryTrust, policy: RegistryPolicy,
                  progress: TreeProgress | None = None) -> RegistryPackage:
    """Fetch ``slug`` from its registry, check every digest and the tag's signature against
    ``policy``, and read it as a package (``main.wasm``, ``Enarx.toml``, the CA bundles it names)."""
    with RegistryClient(slug.host, trust) as client:
        tree = fetch_tree(client, slug, policy, progress)
    return RegistryPackage(package_of(tree), slug, tree.tag.root.meta, tree.tag.signer)


def package_of(tree: FetchedTree) -> Package:
    slug = tree.slug
    root = tree.tag.root.meta
    if not root.is_directory:
        if root.type != WASM_TYPE:
            raise PackageRefused(f"{slug}: its root is a {root.type}, not a {WASM_TYPE} module or a folder")
    else:
        wasm, config = tree.metas.get((MAIN_WASM,)), tree.metas.get((CONFIG_NAME,))
        if wasm is None or wasm.type != WASM_TYPE:
            raise PackageRefused(f"{slug}: the package has no {MAIN_WASM} of type {WASM_TYPE}")
        if config is not None:
            if config.type != TOML_TYPE:
                raise PackageRefused(f"{slug}: its {CONFIG_NAME} is not of type {TOML_TYPE}")
            _check_bundles(tree)
    with tempfile.TemporaryDirectory(prefix="motte-package-") as folder:
        written = write_tree(tree, Path(folder) / "package")
        try:
            package = load_package(written[0] if not root.is_directory else Path(folder) / "package")
        except MotteError as exc:
            raise PackageRefused(str(exc).replace(str(Path(folder) / "package"), str(slug))) from None
    return package._replace(source=str(slug), registry_name=str(slug))


def _check_bundles(tree: FetchedTree) -> None:
    """Every CA bundle the config names is a file of the package: a relative path inside the tree
    (never an absolute path or '..', which would read the tenant's own files)."""
    text = tree.files[(CONFIG_NAME,)].decode("utf-8", "replace")
    try:
        config = parse_enarx_toml(text, source=f"{tree.slug} {CONFIG_NAME}")
    except MotteError as exc:
        raise PackageRefused(str(exc)) from None
    named = [("steward_ca", config.steward_ca)] + [
        (f"files[{fd}].ca", spec.ca) for fd, spec in enumerate(config.files) if spec.kind == "connect"]
    for what, name in named:
        if name is None:
            continue
        try:
            path = tuple(check_entry_name(part) for part in name.split("/"))
        except FormatError:
            raise PackageRefused(f"{tree.slug}: {CONFIG_NAME}: {what} = {name[:120]!r} is not a path inside "
                                 "the package (a package's CA bundles are files of the package)") from None
        if path not in tree.files:
            raise PackageRefused(f"{tree.slug}: {CONFIG_NAME}: {what} names {name[:120]!r}, which the package "
                                 "does not hold")
