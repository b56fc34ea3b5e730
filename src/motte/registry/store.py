"""The registry's store on disk: content-addressed blobs, and what names them in SQLite (or PostgreSQL).

    STORE/
      lock                       held (flock) by the one server using the store (shared by replicas)
      registry.db                SQLite (WAL, synchronous=FULL): users, repos, tags, expected, nodes;
                                 or those tables in a PostgreSQL database replicas share
      blobs/sha256/ab/abcd…      every node's bytes, named by their SHA-256, written once
      tmp/                       uploads in progress (emptied at start; a folder per replica)

Publishing follows Drawbridge's order: the tag entry first, then the tree's nodes, root first.
The tag stays *pending*, invisible to every reader, until the last node of its tree has arrived;
the transaction that stores that node also publishes the tag. A node is accepted only if it is
exactly what its parent directory (or, for the root, the tag entry) says: its type, length and
every digest. A blob is written to ``tmp/``, fsynced, renamed into ``blobs/`` and its directory
fsynced before the row naming it is committed. So a crash at any point leaves either no tag or a
whole one, and every row names a blob that is there. A published tag never changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

from motte.outside.database import Database, DatabaseError, DatabaseUrl, open_database
from motte.outside.http_errors import ApiError
from motte.registry.formats import (
    Entry,
    FormatError,
    Meta,
    TreePath,
    load_json,
    parse_directory,
    semver_key,
)
from motte.shared.control import MAX_WASM_SIZE
from motte.shared.errors import MotteError

# "user" is quoted: PostgreSQL reserves the word. The engines differ only in two type names.
TABLES = """
CREATE TABLE IF NOT EXISTS users ("user" TEXT PRIMARY KEY, body {bytes} NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repos ("user" TEXT NOT NULL, repo TEXT NOT NULL, body {bytes} NOT NULL,
    digest TEXT NOT NULL, public INTEGER NOT NULL, PRIMARY KEY ("user", repo));
CREATE TABLE IF NOT EXISTS tags ("user" TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, body {bytes} NOT NULL,
    type TEXT NOT NULL, digest TEXT NOT NULL, root {bytes} NOT NULL, published INTEGER NOT NULL,
    missing INTEGER NOT NULL, expected INTEGER NOT NULL, bytes INTEGER NOT NULL, created {real} NOT NULL,
    PRIMARY KEY ("user", repo, tag));
CREATE TABLE IF NOT EXISTS expected ("user" TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, path TEXT NOT NULL,
    meta {bytes} NOT NULL, PRIMARY KEY ("user", repo, tag, path));
CREATE TABLE IF NOT EXISTS nodes ("user" TEXT NOT NULL, repo TEXT NOT NULL, tag TEXT NOT NULL, path TEXT NOT NULL,
    meta {bytes} NOT NULL, blob TEXT NOT NULL, PRIMARY KEY ("user", repo, tag, path))
"""
SCHEMA = {
    "sqlite": TABLES.format(bytes="BLOB", real="REAL").split(";"),
    "postgresql": TABLES.format(bytes="BYTEA", real="DOUBLE PRECISION").split(";"),
}


@dataclass(frozen=True)
class StoreLimits:
    max_blob: int = MAX_WASM_SIZE  # one node's bytes
    max_package: int = 1 << 30  # all the bytes of one tag's tree
    max_nodes: int = 4096  # nodes in one tag's tree
    max_directory: int = 1 << 20  # one directory's JSON
    max_entries: int = 1024  # entries in one directory
    max_json: int = 64 << 10  # a tag entry, a user record, a repository config
    pending_ttl: float = 3600.0  # seconds after which another publisher may take over a pending tag


class Stored(NamedTuple):
    """A small document as stored: its bytes, media type and Content-Digest."""

    body: bytes
    type: str
    digest: str


class Node(NamedTuple):
    meta: Meta
    blob: Path


def path_text(path: TreePath) -> str:
    return "/".join(path)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return math.inf  # (gone already)


class Store:
    """The blobs live under ``root``; the rows in ``database`` (default: ``root/registry.db``).

    On SQLite one server owns the store (an exclusive lock). On PostgreSQL replicas share it, and
    ``root`` too (a volume every replica mounts): each holds the lock shared, uploads into a
    ``tmp/`` folder of its own, and at start removes only what was left long enough ago
    (``pending_ttl``) that no live replica can still be about to name it.
    """

    def __init__(self, root: Path, limits: StoreLimits | None = None, database: DatabaseUrl | None = None) -> None:
        self.root = root
        self.limits = limits or StoreLimits()
        self.database = database or DatabaseUrl("sqlite", path=root / "registry.db")
        self.shared = self.database.engine == "postgresql"
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp" / uuid.uuid4().hex if self.shared else root / "tmp"
        self._lock: IO[bytes] | None = None
        self._db: Database | None = None

    # --- opening and closing ---
    def open(self) -> None:
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.blobs.mkdir(parents=True, exist_ok=True)
            lock = (self.root / "lock").open("ab")
        except OSError as exc:
            raise MotteError(f"cannot use the store {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(lock.fileno(), (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise MotteError(f"the store {self.root} is in use by another registry server",
                             hint="replicas share a store only with a postgresql:// database") from None
        self._lock = lock
        try:
            db = open_database(self.database)
            with db.write():
                for statement in SCHEMA[db.engine]:
                    db.execute(statement)
        except DatabaseError:
            self.close()
            raise
        self._db = db
        self._collect_garbage()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def db(self) -> Database:
        assert self._db is not None, "the store is not open"
        return self._db

    def _transaction(self) -> contextlib.AbstractContextManager[Database]:
        return self.db.write()

    def _collect_garbage(self) -> None:
        """Uploads a crash interrupted, and blobs no row names (their row was never committed)."""
        cutoff = time.time() - self.limits.pending_ttl if self.shared else math.inf
        for stale in self.tmp.parent.iterdir() if self.shared else self.tmp.iterdir():
            if stale != self.tmp and _modified(stale) < cutoff:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
        named = {row[0] for row in self.db.execute("SELECT DISTINCT blob FROM nodes").fetchall()}
        for blob in self.blobs.glob("*/*"):
            if blob.name not in named and _modified(blob) < cutoff:
                blob.unlink(missing_ok=True)

    # --- users and repositories ---
    def put_user(self, user: str, doc: Stored) -> bool:
        """Store a user record; False if the very same one exists; 409 if another does."""
        with self._transaction() as db:
            row = db.execute('SELECT body FROM users WHERE "user" = ?', (user,)).fetchone()
            if row is not None:
                if bytes(row[0]) != doc.body:
                    raise ApiError(409, "user_exists", f"user {user} exists already")
                return False
            db.execute("INSERT INTO users VALUES (?, ?, ?)", (user, doc.body, doc.digest))
        return True

    def get_user(self, user: str) -> Stored | None:
        row = self.db.execute('SELECT body, digest FROM users WHERE "user" = ?', (user,)).fetchone()
        return None if row is None else Stored(bytes(row[0]), "application/json", row[1])

    def put_repo(self, user: str, repo: str, doc: Stored, public: bool) -> bool:
        with self._transaction() as db:
            if db.execute('SELECT 1 FROM users WHERE "user" = ?', (user,)).fetchone() is None:
                raise ApiError(404, "no_such_user", f"no user {user}: register it first (motte user register)")
            row = db.execute('SELECT body FROM repos WHERE "user" = ? AND repo = ?', (user, repo)).fetchone()
            if row is not None:
                if bytes(row[0]) != doc.body:
                    raise ApiError(409, "repo_exists", f"repository {user}/{repo} exists already, configured otherwise")
                return False
            db.execute("INSERT INTO repos VALUES (?, ?, ?, ?, ?)", (user, repo, doc.body, doc.digest, int(public)))
        return True

    def get_repo(self, user: str, repo: str) -> tuple[Stored, bool] | None:
        row = self.db.execute('SELECT body, digest, public FROM repos WHERE "user" = ? AND repo = ?',
                              (user, repo)).fetchone()
        return None if row is None else (Stored(bytes(row[0]), "application/json", row[1]), bool(row[2]))

    def tags(self, user: str, repo: str) -> list[str]:
        rows = self.db.execute('SELECT tag FROM tags WHERE "user" = ? AND repo = ? AND published = 1',
                               (user, repo)).fetchall()
        return sorted((row[0] for row in rows), key=semver_key)

    # --- tags ---
    def begin_tag(self, user: str, repo: str, tag: str, doc: Stored, root: Entry) -> bool:
        """Record a tag entry (pending until its tree is whole). False if an entry for the same
        root is recorded already (published, or pending: the publisher resumes; a signature, made
        anew, differs, and the first one stays); 409 for another root."""
        now = time.time()
        key = (user, repo, tag)
        with self._transaction() as db:
            if db.execute('SELECT 1 FROM repos WHERE "user" = ? AND repo = ?', (user, repo)).fetchone() is None:
                raise ApiError(404, "no_such_repo",
                               f"no repository {user}/{repo}: register it first (motte repo register)")
            row = db.execute('SELECT root, published, created FROM tags WHERE "user" = ? AND repo = ? AND tag = ?',
                             key).fetchone()
            if row is not None:
                if bytes(row[0]) == root.json_bytes():
                    return False
                if row[1]:
                    raise ApiError(409, "tag_exists", f"tag {user}/{repo}:{tag} is published with other content; "
                                   "a tag never changes: publish a new version")
                if now - row[2] < self.limits.pending_ttl:
                    raise ApiError(409, "tag_pending", f"tag {user}/{repo}:{tag} is being published with other "
                                   "content; try again later")
                for table in ("tags", "expected", "nodes"):  # an abandoned publish: start afresh
                    db.execute(f'DELETE FROM {table} WHERE "user" = ? AND repo = ? AND tag = ?', key)
            self._check_length(root.meta)
            db.execute("INSERT INTO tags VALUES (?, ?, ?, ?, ?, ?, ?, 0, 1, 1, ?, ?)",
                       (*key, doc.body, doc.type, doc.digest, root.json_bytes(), root.meta.length, now))
            db.execute("INSERT INTO expected VALUES (?, ?, ?, '', ?)", (*key, root.meta.json_bytes()))
        return True

    def get_tag(self, user: str, repo: str, tag: str) -> Stored | None:
        row = self.db.execute('SELECT body, type, digest FROM tags WHERE "user" = ? AND repo = ? AND tag = ? '
                              "AND published = 1", (user, repo, tag)).fetchone()
        return None if row is None else Stored(bytes(row[0]), row[1], row[2])

    # --- tree nodes ---
    def expected_node(self, user: str, repo: str, tag: str, path: TreePath) -> tuple[Meta, bool]:
        """What the node at ``path`` must be, and whether it is stored already."""
        key = (user, repo, tag, path_text(path))
        row = self.db.execute('SELECT meta FROM expected WHERE "user" = ? AND repo = ? AND tag = ? AND path = ?',
                              key).fetchone()
        if row is None:
            if self.db.execute('SELECT 1 FROM tags WHERE "user" = ? AND repo = ? AND tag = ?', key[:3]).fetchone():
                raise ApiError(404, "not_in_tree", f"the tree of {user}/{repo}:{tag} has no node /{key[3]} "
                               "(its parent directory must be uploaded first, and name it)")
            raise ApiError(404, "no_such_tag", f"no tag {user}/{repo}:{tag}: put the tag entry first")
        stored = self.db.execute('SELECT 1 FROM nodes WHERE "user" = ? AND repo = ? AND tag = ? AND path = ?',
                                 key).fetchone()
        return Meta.from_json(load_json(bytes(row[0]), "stored meta")), stored is not None

    def commit_node(self, user: str, repo: str, tag: str, path: TreePath, meta: Meta, blob: str) -> bool:
        """Record a node whose blob is stored; True if that made its tag whole (published)."""
        key = (user, repo, tag)
        children = self._children(path, meta, blob)
        with self._transaction() as db:
            row = db.execute('SELECT missing, expected, bytes FROM tags WHERE "user" = ? AND repo = ? AND tag = ?',
                             key).fetchone()
            if row is None:  # (replaced while this node was uploading)
                raise ApiError(409, "tag_pending", f"tag {user}/{repo}:{tag} was restarted by another publisher")
            inserted: int = db.execute("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?) "
                                  "ON CONFLICT DO NOTHING",
                                  (*key, path_text(path), meta.json_bytes(), blob)).rowcount
            if not inserted:
                return False
            missing, expected, total = int(row[0]) - 1, int(row[1]), int(row[2])
            for name, entry in children.items():
                expected += 1
                total += entry.meta.length
                if expected > self.limits.max_nodes:
                    raise ApiError(413, "package_too_large", f"the tree has more than {self.limits.max_nodes} "
                                   "nodes, the most this registry takes")
                if total > self.limits.max_package:
                    raise ApiError(413, "package_too_large", f"the tree holds more than {self.limits.max_package} "
                                   "bytes, the most this registry takes")
                self._check_length(entry.meta)
                db.execute("INSERT INTO expected VALUES (?, ?, ?, ?, ?)",
                           (*key, path_text((*path, name)), entry.meta.json_bytes()))
                missing += 1
            db.execute("UPDATE tags SET missing = ?, expected = ?, bytes = ?, published = ? "
                       'WHERE "user" = ? AND repo = ? AND tag = ?', (missing, expected, total, int(missing == 0), *key))
        return missing == 0

    def _children(self, path: TreePath, meta: Meta, blob: str) -> dict[str, Entry]:
        if not meta.is_directory:
            return {}
        data = self.blob_path(blob).read_bytes()
        try:
            return parse_directory(data, self.limits.max_entries, f"directory /{path_text(path)}")
        except FormatError as exc:
            raise ApiError(400, "bad_directory", str(exc)) from None

    def _check_length(self, meta: Meta) -> None:
        limit = self.limits.max_directory if meta.is_directory else self.limits.max_blob
        if meta.length > limit:
            raise ApiError(413, "node_too_large", f"a node of {meta.length} bytes: this registry takes at most {limit}")

    def get_node(self, user: str, repo: str, tag: str, path: TreePath) -> Node | None:
        row = self.db.execute(
            'SELECT n.meta, n.blob FROM nodes n JOIN tags t USING ("user", repo, tag) '
            'WHERE n."user" = ? AND n.repo = ? AND n.tag = ? AND n.path = ? AND t.published = 1',
            (user, repo, tag, path_text(path))).fetchone()
        if row is None:
            return None
        return Node(Meta.from_json(load_json(bytes(row[0]), "stored meta")), self.blob_path(row[1]))

    # --- blobs ---
    def blob_path(self, sha256_hex: str) -> Path:
        return self.blobs / sha256_hex[:2] / sha256_hex

    def new_upload(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    def commit_blob(self, upload: Path, sha256_hex: str) -> None:
        """Make a fully written, fsynced upload the blob of that digest (blocking: run in a thread)."""
        final = self.blob_path(sha256_hex)
        final.parent.mkdir(exist_ok=True)
        os.replace(upload, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

