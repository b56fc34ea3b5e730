"""A package folder (or a single ``.wasm``) as a Drawbridge tree: every node's Meta, the
directories' JSON, in the order Drawbridge uploads them (the root first, then by path)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from motte.registry.formats import (
    DIRECTORY_TYPE,
    OCTET_TYPE,
    TOML_TYPE,
    WASM_TYPE,
    Entry,
    FormatError,
    Hasher,
    Meta,
    TreePath,
    check_entry_name,
    directory_bytes,
)
from motte.shared.errors import MotteError

MAX_NODES = 4096
MAX_DEPTH = 32
CHUNK = 1 << 20
MEDIA_TYPES = {".wasm": WASM_TYPE, ".toml": TOML_TYPE}


class TreeError(MotteError):
    """The folder cannot be published as a tree."""


@dataclass(frozen=True)
class LocalNode:
    path: TreePath
    meta: Meta
    file: Path | None = None  # a file's bytes are read from here
    content: bytes = b""  # a directory's JSON

    @property
    def shown(self) -> str:
        return "/" + "/".join(self.path)


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(os.path.splitext(name)[1].lower(), OCTET_TYPE)


def file_meta(path: Path, media: str) -> Meta:
    hasher = Hasher()
    try:
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                hasher.update(chunk)
    except OSError as exc:
        raise TreeError(f"cannot read {path}: {exc.strerror or exc}") from None
    return Meta(hasher.digests(), hasher.length, media)


def build_tree(root: Path) -> list[LocalNode]:
    """Every node of the tree at ``root``, the root first. Symbolic links, special files and names
    a Drawbridge tree cannot hold are refused, each naming the file."""
    try:
        mode = root.lstat().st_mode
    except OSError as exc:
        raise TreeError(f"{root}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return [LocalNode((), file_meta(root, media_type(root.name)), root)]
    if not stat.S_ISDIR(mode):
        raise TreeError(f"{root}: not a file or a folder")
    nodes: list[LocalNode] = []
    _directory(root, (), nodes)
    nodes.sort(key=lambda node: node.path)
    return nodes


def _directory(folder: Path, path: TreePath, nodes: list[LocalNode]) -> Meta:
    if len(path) > MAX_DEPTH:
        raise TreeError(f"{folder}: folders nested deeper than {MAX_DEPTH}")
    entries: dict[str, Entry] = {}
    try:
        children = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise TreeError(f"cannot list {folder}: {exc.strerror or exc}") from None
    for child in children:
        where = folder / child.name
        try:
            check_entry_name(child.name)
        except FormatError as exc:
            raise TreeError(f"{where}: {exc}") from None
        if child.is_symlink():
            raise TreeError(f"{where}: a symbolic link; a package holds files and folders only")
        if child.is_dir(follow_symlinks=False):
            meta = _directory(Path(child.path), (*path, child.name), nodes)
        elif child.is_file(follow_symlinks=False):
            meta = file_meta(where, media_type(child.name))
            nodes.append(LocalNode((*path, child.name), meta, where))
        else:
            raise TreeError(f"{where}: not a regular file or a folder")
        entries[child.name] = Entry(meta)
        if len(nodes) >= MAX_NODES:
            raise TreeError(f"{folder}: more than {MAX_NODES} files and folders")
    content = directory_bytes(entries)
    meta = Meta.of(content, DIRECTORY_TYPE)
    nodes.append(LocalNode(path, meta, None, content))
    return meta
