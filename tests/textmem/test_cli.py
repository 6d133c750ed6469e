"""`memlm write` in a terminal: automatic steps, stop and resume from the store, an interactive session, export."""

import pytest
from conftest import memlm_write

from memlm.textmem import TextMemory


def test_auto_steps_resume_interact_and_export(openai_server, tmp_path, embedder):
    store = str(tmp_path / "story.db")
    first = memlm_write("--store", store, "--backend", openai_server.url, "--premise", "Numbers.", "--auto", "2",
                        "--choose", "first")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "--- step 3 ---" in first.stdout and "summary: 3 paragraphs" in first.stdout
    # a second session continues the same story, here interactively: edit memory, pick plan 2, quit
    second = memlm_write("--store", store, "--backend", openai_server.url,
                         stdin="m\nThe hero is called Ada.\n2\nq\n")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "--- step 4 ---" in second.stdout and "summary: 4 paragraphs" in second.stdout
    last_prompt = openai_server.requests[-1][1]["messages"][0]["content"]
    assert "The hero is called Ada." in last_prompt and "Plan 3.2." in last_prompt
    out = tmp_path / "story.md"
    exported = memlm_write("--store", store, "--export", str(out))
    assert exported.returncode == 0 and "wrote 4 paragraphs" in exported.stdout
    assert out.read_text() == "> Numbers.\n\n" + "\n\n".join(f"Paragraph number {n}." for n in (1, 2, 3, 4)) + "\n"
    with TextMemory(store, embedder=embedder, scope="story") as memory:
        assert len(memory.items("paragraph")) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "http://127.0.0.1:9/v1", "--auto", "1", "--premise", "x"], "no OpenAI-compatible server answers"),
    (["--backend", "hf:/no/such/model"], "backend model path '/no/such/model' is not a directory"),
    (["--auto", "1"], "--backend is required"),
    (["--export", "out.md"], "does not exist: nothing to export"),
])
def test_bad_arguments_are_clear_errors(tmp_path, args, message):
    result = memlm_write("--store", str(tmp_path / "missing.db"), *args)
    assert result.returncode != 0 and message in result.stderr
