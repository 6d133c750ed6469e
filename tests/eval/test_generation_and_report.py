import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memlm
from memlm.eval.generation import greedy_answers
from memlm.eval.report import summarize, write_report
from memlm.tokenization import byte_level_tokenizer

RUN_EVAL = Path(__file__).resolve().parents[2] / "scripts" / "run_eval.py"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = memlm.MemLMConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                               hybrid_ratio="3:1", pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    model = memlm.MemLMForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # decisive logits: no greedy near-ties
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model, tokenizer


def test_left_padded_batches_give_the_answers_of_batch_size_one(saved_model):
    _, model, tokenizer = saved_model
    prompts = ["The grass is green.", "Key: 41", "One of the special magic numbers for apple is: 1234567. What"]
    batched = greedy_answers(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    alone = [greedy_answers(model, tokenizer, [p], max_new_tokens=12, batch_size=1)[0] for p in prompts]
    assert batched == alone


def test_report_files(tmp_path):
    records = [{"task": "niah", "variant": variant, "context_length": n, "depth": d,
                "score": float(d < 1 or variant == "jrt")}
               for variant in ("plain", "jrt") for n in (64, 128) for d in (0.0, 1.0)]
    paths = write_report(records, tmp_path, meta={"model": "x"})
    assert {"task": "niah", "variant": "plain", "context_length": 64, "examples": 2, "score": 0.5} in summarize(records)
    assert json.loads(paths["json"].read_text())["meta"] == {"model": "x"}
    assert "| niah | plain | 128 | 2 | 0.500 |" in paths["table"].read_text()
    assert "| niah | jrt | 128 | 2 | 1.000 |" in paths["table"].read_text()
    for key in ("lengths_plot", "niah_heatmap", "niah_jrt_heatmap"):  # one heatmap per variant
        assert paths[key].read_bytes()[:4] == b"\x89PNG"


def test_eval_entry_point_end_to_end(saved_model, tmp_path):
    path, _, _ = saved_model
    result = subprocess.run(
        [sys.executable, str(RUN_EVAL), "--model", str(path),
         "--tasks", "niah,mqar,doc_recall,icl_label_remapping,icl_associative_recall",
         "--context-lengths", "80,96", "--depths", "0,1", "--num-examples", "2", "--max-new-tokens", "4",
         "--mqar-vocab-size", "64", "--mqar-seq-len", "32", "--mqar-num-kv-pairs", "4", "--niah-jrt", "--mqar-jrt",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "summary:" in result.stdout
    table = (tmp_path / "results.md").read_text()
    for row in ("| doc_recall | plain |", "| doc_recall | jrt |", "| icl_label_remapping | 8-shot |", "| mqar | 4kv |",
                "| mqar | 4kv jrt |", "| niah | plain | 80 |", "| niah | jrt | 96 |"):
        assert row in table
    assert {"results.json", "results.md", "score_by_length.png", "niah_heatmap.png", "niah_jrt_heatmap.png"} <= {
        p.name for p in tmp_path.iterdir()}
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    doc = [r for r in records if r["task"] == "doc_recall"]  # kept for error analysis
    assert len(doc) == 4 and all(r["attribute"] and r["answers"] and isinstance(r["output"], str) for r in doc)


def test_eval_entry_point_rejects_unknown_tasks(saved_model, tmp_path):
    path, _, _ = saved_model
    result = subprocess.run([sys.executable, str(RUN_EVAL), "--model", str(path), "--tasks", "bogus",
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown task(s) ['bogus']" in result.stderr
    result = subprocess.run([sys.executable, str(RUN_EVAL), "--model", str(path), "--tasks",
                             "doc_recall", "--doc-num-attributes", "99", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "--doc-num-attributes must be at most" in result.stderr
