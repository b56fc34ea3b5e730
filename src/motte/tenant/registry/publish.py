"""``motte package publish``: a folder to ``user/repo:tag``, in Drawbridge's order (the tag entry,
then the tree, root first). The registry publishes the tag when the last node has arrived."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from motte.registry.formats import ENTRY_TYPE, JWS_TYPE, Entry, Meta, Slug
from motte.registry.signing import SigningKey, publisher_id, sign_tag
from motte.tenant.registry.client import CHUNK, Progress, RegistryClient, RegistryError
from motte.tenant.registry.tree import LocalNode, build_tree


@dataclass(frozen=True)
class Published:
    slug: Slug
    root: Meta
    signer: str | None  # the publisher's key thumbprint, for a signed tag
    created: bool  # False: the tag was there already, for this very tree (and keeps its first signature)
    nodes: int
    uploaded: int  # nodes sent (others were there already)
    bytes: int  # bytes sent


class _Reader:
    """A file read for an upload, reporting progress."""

    def __init__(self, file: IO[bytes], progress: Callable[[int], None]) -> None:
        self._file = file
        self._progress = progress

    def read(self, size: int = CHUNK) -> bytes:
        chunk = self._file.read(size)
        self._progress(len(chunk))
        return chunk


def tag_body(root: Meta, slug: Slug, key: SigningKey | None) -> tuple[bytes, str]:
    entry = Entry(root)
    if key is None:
        return entry.json_bytes(), ENTRY_TYPE
    return sign_tag(entry, key, slug.tag_name), JWS_TYPE


def publish(client: RegistryClient, slug: Slug, folder: Path, key: SigningKey | None = None,
            progress: Progress | None = None) -> Published:
    nodes = build_tree(folder)
    body, content_type = tag_body(nodes[0].meta, slug, key)
    created = client.request("PUT", slug.route("tag"), body, {
        "Content-Type": content_type, "Content-Digest": Meta.of(body, content_type).content_digest}).status == 201
    total = sum(node.meta.length for node in nodes)
    sent = [0, 0]  # bytes, nodes

    def advance(count: int) -> None:
        sent[0] += count
        if progress is not None:
            progress(sent[0], total)

    for node in nodes:
        if _put_node(client, slug, node, advance):
            sent[1] += 1
    if client.request("HEAD", slug.route("tag")).status != 200:
        raise RegistryError(f"{slug}: every node was sent, but the registry does not show the tag")
    return Published(slug, nodes[0].meta, publisher_id(key) if key else None, created, len(nodes), sent[1], sent[0])


def _put_node(client: RegistryClient, slug: Slug, node: LocalNode, advance: Callable[[int], None]) -> bool:
    headers = {"Content-Type": node.meta.type, "Content-Length": str(node.meta.length),
               "Content-Digest": node.meta.content_digest}
    route = slug.route("tree", node.path)
    if node.file is None:
        reply = client.request("PUT", route, node.content, headers)
        advance(len(node.content))
        return reply.status == 201
    try:
        with node.file.open("rb") as file:
            reply = client.request("PUT", route, _Reader(file, advance), headers)  # type: ignore[arg-type]
    except OSError as exc:
        raise RegistryError(f"cannot read {node.file}: {exc.strerror or exc}") from None
    except RegistryError as exc:
        if exc.code in ("digest_mismatch", "length_mismatch"):
            raise RegistryError(f"{node.file} changed while it was published: {exc}",
                                hint="publish it again once it no longer changes") from None
        raise
    return reply.status == 201
