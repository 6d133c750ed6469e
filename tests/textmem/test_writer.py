"""RecurrentWriter with scripted backends and with a tiny local transformers model."""

import pytest
import torch
from conftest import formatted_answer, kill_when_marked, memlm_write, numbered_answers

from memlm import MemLMConfig, MemLMForCausalLM
from memlm.textmem import (
    RecurrentWriter,
    ScriptedBackend,
    StoreBusyError,
    TextMemory,
    TransformersBackend,
    WriterError,
    parse_sections,
)
from memlm.tokenization import byte_level_tokenizer


@pytest.fixture
def memory(tmp_path, embedder):
    with TextMemory(tmp_path / "story.db", embedder=embedder) as store:
        yield store


def test_parse_sections_accepts_markdown_headers_and_names_what_is_missing():
    text = "**Paragraph:** The sun rose.\n\n## Memory:\nA day began.\n\nPlan 1: go\nPlan 2: stay\nPLAN 3:\nwait"
    assert parse_sections(text, ("Paragraph", "Memory", "Plan 1", "Plan 2", "Plan 3")) == {
        "Paragraph": "The sun rose.", "Memory": "A day began.", "Plan 1": "go", "Plan 2": "stay", "Plan 3": "wait"}
    with pytest.raises(ValueError, match="no \\(or an empty\\) 'Plan 2:', 'Plan 3:' section"):
        parse_sections("Paragraph: x\nMemory: y\nPlan 1: z\nPlan 2:\n", ("Paragraph", "Memory", "Plan 1", "Plan 2",
                                                                         "Plan 3"))


def test_the_loop_writes_remembers_and_retrieves(memory):
    backend = ScriptedBackend(numbered_answers())
    writer = RecurrentWriter(memory, backend, retrieve_k=1)
    first = writer.start("A story about numbers.")
    assert (first.step, first.paragraph, first.plans) == (1, "Paragraph number 1.", ["Plan 1.1.", "Plan 1.2.",
                                                                                     "Plan 1.3."])
    for _ in range(3):
        writer.step(1)
    assert writer.paragraphs() == [f"Paragraph number {n}." for n in (1, 2, 3, 4)]
    assert writer.short_term() == "Memory after paragraph 4."
    assert writer.plans() == ["Plan 4.1.", "Plan 4.2.", "Plan 4.3."]
    last_prompt = backend.prompts[-1]
    assert "Plan 3.2." in last_prompt and "Memory after paragraph 3." in last_prompt  # plan and h_{t-1}
    assert "The last paragraph written:\nParagraph number 3." in last_prompt
    related = last_prompt.split("relate to what comes next:\n")[1].split("\n\nThe last paragraph")[0]
    assert related.startswith("Paragraph number") and related != "Paragraph number 3."  # retrieved, not the last
    history = memory.history(writer.state["short_term_id"])
    assert history == [f"Memory after paragraph {n}." for n in (1, 2, 3)]  # every earlier version kept
    assert [i.text for i in memory.items("plan")] == ["Plan 1.2.", "Plan 2.2.", "Plan 3.2."]
    assert writer.export_markdown().startswith("> A story about numbers.\n\nParagraph number 1.")


def test_human_edits_reach_the_next_step(memory):
    backend = ScriptedBackend(numbered_answers())
    writer = RecurrentWriter(memory, backend)
    writer.start("premise")
    writer.edit_short_term("The hero's name is Ada.")
    writer.edit_plan(2, "Ada finds a door in the sea.")
    memory.edit(writer.state["paragraph_id"], "Ada stood on the shore.")
    result = writer.step(2)
    prompt = backend.prompts[-1]
    assert "The hero's name is Ada." in prompt and "Ada finds a door in the sea." in prompt
    assert "Ada stood on the shore." in prompt and result.plan == "Ada finds a door in the sea."
    writer.step("A plan of my own.")
    assert "A plan of my own." in backend.prompts[-1]


def test_a_resumed_writer_continues_the_same_story(memory, embedder):
    RecurrentWriter(memory, ScriptedBackend(numbered_answers())).start("premise")
    memory.close()  # one writer at a time: the next session opens the store once this one has ended
    again = RecurrentWriter(TextMemory(memory.path, embedder=embedder), ScriptedBackend(numbered_answers("Later")))
    assert again.started and again.step(0).step == 2
    assert again.paragraphs() == ["Paragraph number 1.", "Later 1."]
    with pytest.raises(RuntimeError, match="has already started"):
        again.start("another premise")


def test_unparsable_answers_are_retried_then_reported(memory):
    good = formatted_answer("It rained.", "Rain.")
    backend = ScriptedBackend(["I cannot do that.", good])
    writer = RecurrentWriter(memory, backend, max_retries=1)
    assert writer.start("premise").paragraph == "It rained."
    assert "Your previous answer could not be used: the answer has no" in backend.prompts[1]
    writer.backend = ScriptedBackend(["nonsense"] * 3)
    with pytest.raises(WriterError, match="no usable answer in 2 tries .*last answer:\nnonsense"):
        writer.step(0)
    assert writer.state["step"] == 1 and writer.paragraphs() == ["It rained."]  # the failed step wrote nothing


def test_short_term_memory_stays_under_budget_and_loses_nothing(memory):
    long_memory = " ".join(f"Fact number {i} matters." for i in range(20))  # 80 words
    backend = ScriptedBackend([formatted_answer("P1.", long_memory), "Memory:\nStill far too long. " + long_memory])
    writer = RecurrentWriter(memory, backend, memory_words=12, max_retries=0)
    writer.start("premise")
    assert "Shorten this short-term memory" in backend.prompts[1]
    assert len(writer.short_term().split()) <= 12 and writer.short_term().endswith("Fact number 19 matters.")
    summary = memory.items("summary")[0].text  # the overflow moved to long-term memory
    assert summary.startswith("Still far too long.") and (summary + " " + writer.short_term()).endswith(long_memory)


def test_the_model_chooses_a_plan(memory):
    answers = numbered_answers()
    backend = ScriptedBackend(lambda prompt: "I pick 3." if "Which plan" in prompt else answers(prompt))
    writer = RecurrentWriter(memory, backend, chooser="model")
    writer.start("premise")
    assert writer.step().plan == "Plan 1.3."
    writer.chooser = lambda plans: 1
    assert writer.step().plan == "Plan 2.2."


def test_bad_settings_are_refused(memory, tmp_path):
    backend = ScriptedBackend([])
    with pytest.raises(ValueError, match="memory_words must be an int >= 1, got 0"):
        RecurrentWriter(memory, backend, memory_words=0)
    with pytest.raises(ValueError, match="chooser must be"):
        RecurrentWriter(memory, backend, chooser="best")
    with pytest.raises(FileNotFoundError, match="lacks \\['start.txt'"):
        RecurrentWriter(memory, backend, templates=tmp_path)
    with pytest.raises(RuntimeError, match="call start\\(premise\\) first"):
        RecurrentWriter(memory, backend).step(0)


ANSWER = formatted_answer("The tiny model wrote this.", "It remembers.", ["Go on.", "Stop.", "Turn."])
TAIL = "<a plan>\n\nPlan 3:\n<a plan>\n"  # how every prompt of the writer ends


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer byte-level memlm model taught (overfitted) to answer any writer prompt with ANSWER."""
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    model = MemLMForCausalLM(MemLMConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, hybrid_ratio="1:1",
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    ids = torch.tensor([tokenizer(TAIL + ANSWER)["input_ids"] + [tokenizer.eos_token_id]])
    labels = ids.clone()
    labels[:, : len(tokenizer(TAIL)["input_ids"])] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 1e-3:
            break
    path = tmp_path_factory.mktemp("tiny_writer_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_the_loop_runs_with_a_tiny_local_transformers_model(memory, tiny_model_dir):
    backend = TransformersBackend(tiny_model_dir, device="cpu")
    assert not backend.chat  # a byte-level tokenizer has no chat template: the prompt goes in as is
    streamed = []
    writer = RecurrentWriter(memory, backend, max_new_tokens=len(ANSWER) + 8)
    assert writer.start("A premise.", on_text=streamed.append).paragraph == "The tiny model wrote this."
    assert "".join(streamed).strip() == ANSWER  # streamed as it was generated
    result = writer.step(1)
    assert result.paragraph == "The tiny model wrote this." and result.plan == "Stop."
    assert writer.paragraphs() == ["The tiny model wrote this."] * 2


def test_pickled_weights_are_never_loaded(tiny_model_dir, tmp_path, monkeypatch):
    """A model directory with only ``pytorch_model.bin`` (a pickle) is refused: with the path checked and, for
    a name that is not checked, by ``use_safetensors=True``."""
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.unlink()
    state = MemLMForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(ValueError, match="has no .safetensors weights: memlm loads weights from safetensors only"):
        TransformersBackend(str(pickled), device="cpu")
    monkeypatch.chdir(tmp_path)  # "pickled" is not checked as a path (it could be a hub name): transformers refuses
    with pytest.raises(ValueError, match="safetensors"):
        TransformersBackend("pickled", device="cpu")


def test_a_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backend model path .* is not a directory"):
        TransformersBackend(str(tmp_path / "no_such_model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a model directory: it has no config.json"):
        TransformersBackend(str(tmp_path / "empty"))


def test_a_writer_killed_in_the_middle_of_a_step_keeps_the_steps_before(tmp_path, embedder):
    import os

    store, marker = tmp_path / "story.db", tmp_path / "in_step_3"
    code = f"""
import time
from pathlib import Path
from conftest import numbered_answers
from memlm.textmem import RecurrentWriter, ScriptedBackend, TextMemory

answers = numbered_answers()
def answer(prompt):
    text = answers(prompt)
    if "Paragraph number 3." in text:  # the backend is busy with step 3 when the process is killed
        Path({str(marker)!r}).write_text("now")
        time.sleep(600)
    return text
writer = RecurrentWriter(TextMemory({str(store)!r}), ScriptedBackend(answer))
writer.start("premise")
while True:
    writer.step(0)
"""
    kill_when_marked(code, marker, cwd=os.path.dirname(__file__))
    with TextMemory(store, embedder=embedder) as memory:
        writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers("Resumed")))
        assert writer.state["step"] == 2 and writer.paragraphs() == ["Paragraph number 1.", "Paragraph number 2."]
        assert writer.short_term() == "Memory after paragraph 2."
        assert writer.step(0).step == 3  # and the story goes on


def test_a_second_writer_is_refused_and_the_story_does_not_fork(tmp_path, embedder, openai_server):
    """While one process writes a story, a second writer (in this process or ``memlm write``) is refused, naming
    the first's pid; reading (``--export``, ``read_only=True``) still works; the story goes on from one step."""
    import os
    import subprocess
    import sys
    import time

    store, holding, go = tmp_path / "story.db", tmp_path / "holding", tmp_path / "go"
    with TextMemory(store, embedder=embedder) as memory:
        writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers()))
        writer.start("premise")
        writer.step(0)
        writer.step(0)
    code = f"""
import time
from pathlib import Path
from conftest import numbered_answers
from memlm.textmem import RecurrentWriter, ScriptedBackend, TextMemory
with TextMemory({str(store)!r}) as memory:
    Path({str(holding)!r}).write_text("open")
    while not Path({str(go)!r}).exists():
        time.sleep(0.1)
    writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers("First writer")))
    for _ in range(3):
        writer.step(0)
"""
    first = subprocess.Popen([sys.executable, "-c", code], cwd=os.path.dirname(__file__))
    try:
        deadline = time.time() + 300
        while not holding.exists():
            assert time.time() < deadline and first.poll() is None, "the first writer did not open the store"
            time.sleep(0.2)
        busy = rf"story.db' is open for writing by another writer \(pid {first.pid},"
        with pytest.raises(StoreBusyError, match=busy):
            TextMemory(store, embedder=embedder)
        second = memlm_write("--store", str(store), "--scope", "default", "--backend", openai_server.url,
                             "--auto", "3", "--choose", "first")
        assert second.returncode != 0 and f"is open for writing by another writer (pid {first.pid}" in second.stderr
        exported = memlm_write("--store", str(store), "--scope", "default", "--export", str(tmp_path / "story.md"))
        assert exported.returncode == 0 and "wrote 3 paragraphs" in exported.stdout, exported.stderr[-2000:]
        with TextMemory(store, embedder=embedder, read_only=True) as reader:
            assert RecurrentWriter(reader, None).state["step"] == 3
        go.touch()
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    with TextMemory(store, embedder=embedder) as memory:  # the lock went with the first writer
        writer = RecurrentWriter(memory, ScriptedBackend(numbered_answers()))
        assert writer.state["step"] == 6
        assert writer.paragraphs() == [f"Paragraph number {n}." for n in (1, 2, 3)] + \
            [f"First writer {n}." for n in (1, 2, 3)]
