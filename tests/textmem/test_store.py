"""TextMemory on a real SQLite file with the real embedder (all-MiniLM-L6-v2)."""

import contextlib
import hashlib
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from conftest import kill_when_marked, memlm_write

from memlm.textmem import MemoryItem, TextMemory
from memlm.textmem.store import APPLICATION_ID

STORY = [
    "The knight polished her sword before riding north to the frozen pass.",
    "In the harbor town, fishermen argued about the price of cod at dawn.",
    "A dragon slept coiled around a hoard of gold deep inside the mountain.",
    "The baker's daughter learned to read from an old book of recipes.",
    "Storm clouds gathered over the vineyard as the harvest began.",
]


def test_search_finds_the_relevant_paragraph_among_distractors(tmp_path, embedder):
    with TextMemory(tmp_path / "m.db", embedder=embedder) as memory:
        ids = [memory.add(text) for text in STORY]
        best = memory.search("Where does the dragon keep its treasure?", k=2)
        assert [item.id for item in best][0] == ids[2]
        assert isinstance(best[0], MemoryItem) and best[0].text == STORY[2] and best[0].score > best[1].score
        assert memory.search("selling fish at the port", k=1)[0].id == ids[1]
        assert [i.id for i in memory.search("dragon gold", k=5, exclude=(ids[2],))][0] != ids[2]


def test_edit_keeps_history_and_changes_what_search_finds(tmp_path, embedder):
    with TextMemory(tmp_path / "m.db", embedder=embedder) as memory:
        ids = [memory.add(text) for text in STORY]
        memory.edit(ids[3], "The baker's daughter tamed a wild griffin in the forest.")
        memory.edit(ids[3], "The baker's daughter tamed a wild griffin in the dark forest.")
        assert memory.history(ids[3]) == [STORY[3], "The baker's daughter tamed a wild griffin in the forest."]
        assert memory.history(ids[0]) == []
        assert memory.search("Who tamed the griffin?", k=1)[0].id == ids[3]  # found by its new text
        with pytest.raises(KeyError, match="no item with id 999"):
            memory.edit(999, "x")


def test_everything_persists_across_processes(tmp_path, embedder):
    path = tmp_path / "m.db"
    code = f"""
from memlm.textmem import TextMemory
with TextMemory({str(path)!r}, scope="saga") as m:
    ids = [m.add(t) for t in {STORY!r}]
    m.edit(ids[0], "The knight sold her sword.")
    m.add("A plan: the knight meets the dragon.", kind="plan")
    m.set_state("writer", {{"step": 3, "plans": ["a", "b"]}})
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    with TextMemory(path, embedder=embedder, scope="saga") as memory:
        assert [i.text for i in memory.items("paragraph")] == ["The knight sold her sword.", *STORY[1:]]
        assert memory.history(memory.items("paragraph")[0].id) == [STORY[0]]
        assert [i.text for i in memory.items("plan")] == ["A plan: the knight meets the dragon."]
        assert memory.get_state("writer") == {"step": 3, "plans": ["a", "b"]}
        assert memory.search("dragon hoard", k=1)[0].text == STORY[2]  # vectors stored, not recomputed
    with TextMemory(path, embedder=embedder, scope="other") as other:  # scopes are separate
        assert other.items() == [] and other.search("dragon", k=3) == [] and other.get_state("writer") is None


def test_each_item_is_embedded_once(tmp_path, embedder):
    calls = []

    class CountingEmbedder:
        name = embedder.name

        def encode(self, texts):
            calls.append(list(texts))
            return embedder.encode(texts)

    with TextMemory(tmp_path / "m.db", embedder=CountingEmbedder()) as memory:
        for text in STORY:
            memory.add(text)
        for query in ("dragon", "fish", "wine"):
            memory.search(query, k=2)
    assert sum(len(batch) for batch in calls) == len(STORY) + 3  # each item once, each query once


def test_a_failed_transaction_leaves_nothing(tmp_path, embedder):
    with TextMemory(tmp_path / "m.db", embedder=embedder) as memory:
        memory.add(STORY[0])
        with pytest.raises(RuntimeError, match="boom"), memory.transaction():
            memory.add(STORY[1])
            memory.set_state("writer", {"step": 2})
            raise RuntimeError("boom")
        assert [i.text for i in memory.items()] == [STORY[0]] and memory.get_state("writer") is None
        assert len(memory.search("harbor", k=5)) == 1


def test_a_killed_process_loses_nothing_it_committed(tmp_path, embedder):
    path, marker = tmp_path / "m.db", tmp_path / "committed"
    code = f"""
import time
from pathlib import Path
from memlm.textmem import TextMemory
m = TextMemory({str(path)!r})
m.add("first committed paragraph")
m.add("second committed paragraph")
with m.transaction():
    m.add("written inside a transaction that never commits")
    Path({str(marker)!r}).write_text("ready")
    time.sleep(600)
"""
    kill_when_marked(code, marker)
    with TextMemory(path, embedder=embedder) as memory:
        assert [i.text for i in memory.items()] == ["first committed paragraph", "second committed paragraph"]
        memory.add("the store is still writable")


def test_bad_input_gives_clear_errors(tmp_path, embedder):
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        TextMemory(tmp_path / "missing" / "m.db", embedder=embedder)
    (tmp_path / "not_a_db").write_text("hello, I am not SQLite" * 100)
    with pytest.raises(ValueError, match="is not a memlm text-memory store"):
        TextMemory(tmp_path / "not_a_db", embedder=embedder)
    with TextMemory(tmp_path / "m.db", embedder=embedder) as memory:
        for call, message in ((lambda: memory.add("  "), "text must be a non-empty string"),
                              (lambda: memory.search("x", k=0), "k must be a positive int"),
                              (lambda: memory.add("x", kind=""), "kind must be a non-empty string")):
            with pytest.raises(ValueError, match=message):
                call()
        memory.add(STORY[0])

    class OtherEmbedder:
        name = "another-model"

        def encode(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32)

    with TextMemory(tmp_path / "m.db", embedder=OtherEmbedder()) as memory, \
            pytest.raises(ValueError, match="holds embeddings of .*all-MiniLM-L6-v2"):
        memory.search("knight", k=1)


def test_an_empty_scope_is_refused(tmp_path):
    with pytest.raises(ValueError, match="scope must be a non-empty string"):
        TextMemory(tmp_path / "m.db", scope="")


def folder_bytes(folder) -> dict[str, str]:
    """Every file of ``folder`` and the hash of its bytes (a changed, added or removed file shows)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def make_sqlite(path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def test_a_sqlite_file_that_is_not_a_store_is_refused_untouched(tmp_path, embedder):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    make_sqlite(foreign / "contacts.db", "CREATE TABLE people (name TEXT)", "INSERT INTO people VALUES ('Ada')")
    make_sqlite(foreign / "other_app.db", "PRAGMA application_id = 42", "CREATE TABLE items (x)")
    make_sqlite(foreign / "no_tables.db", "PRAGMA user_version = 7")
    before = folder_bytes(foreign)
    out = tmp_path / "story.md"
    for name, why in (("contacts.db", r"tables \['people'\], not memlm's"), ("other_app.db", "application_id 0x2a"),
                      ("no_tables.db", r"tables \[\], not memlm's")):
        path = foreign / name
        for read_only in (False, True):
            with pytest.raises(ValueError, match=f"is not a memlm text-memory store .*{why}.* left unchanged"):
                TextMemory(path, embedder=embedder, read_only=read_only)
        exported = memlm_write("--store", str(path), "--export", str(out))
        assert exported.returncode != 0 and "is not a memlm text-memory store" in exported.stderr
        assert not out.exists()
    assert folder_bytes(foreign) == before  # no byte changed, no lock, journal or WAL file made
    for name in before:
        with contextlib.closing(sqlite3.connect(f"file:{foreign / name}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # still not switched to WAL
    (tmp_path / "empty.db").touch()  # an empty file, like a missing one, becomes a new store
    with TextMemory(tmp_path / "empty.db", embedder=embedder) as memory:
        memory.add(STORY[0])
    assert (tmp_path / "empty.db").read_bytes()[68:72] == APPLICATION_ID.to_bytes(4, "big")


def test_a_store_written_before_stores_were_marked_still_opens(tmp_path, embedder):
    path = tmp_path / "m.db"
    with TextMemory(path, embedder=embedder) as memory:
        memory.add(STORY[0])
    make_sqlite(path, "PRAGMA application_id = 0")  # as memlm wrote stores before it marked them
    with TextMemory(path, embedder=embedder, read_only=True) as memory:
        assert [item.text for item in memory.items()] == [STORY[0]]
    with TextMemory(path, embedder=embedder) as memory:
        assert [item.text for item in memory.items()] == [STORY[0]]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)  # marked now


def test_a_read_only_store_reads_and_refuses_writes(tmp_path, embedder):
    with pytest.raises(FileNotFoundError, match="holds no store to read"):
        TextMemory(tmp_path / "missing.db", embedder=embedder, read_only=True)
    assert not (tmp_path / "missing.db").exists()
    with TextMemory(tmp_path / "m.db", embedder=embedder) as writer:
        first = writer.add(STORY[0])
        with TextMemory(tmp_path / "m.db", embedder=embedder, read_only=True) as reader:  # beside the writer
            assert reader.search("knight", k=1)[0].id == first
            for write in (lambda: reader.add(STORY[1]), lambda: reader.edit(first, "x"),
                          lambda: reader.set_state("k", 1)):
                with pytest.raises(RuntimeError, match="was opened with read_only=True: it cannot be written"):
                    write()
        writer.add(STORY[1])
