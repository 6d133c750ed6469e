"""TextMemory on a real SQLite file with the real embedder (all-MiniLM-L6-v2)."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import kill_when_marked

from memlm.textmem import MemoryItem, TextMemory

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
