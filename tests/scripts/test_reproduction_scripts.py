"""The reproduction and benchmark scripts run end to end on tiny settings and write what they promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from transformers import AutoModelForCausalLM

from memlm.data import mqar, passkey
from tests.eval.test_recall import scores_by_hand

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# transformers < 5.24: generate asks a cache without attention layers for its length (README: Compatibility), and
# the JRT-Prompt reproduction generates with its all-GatedDeltaNet model
generates_without_attention = pytest.mark.skipif(
    tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 24),
    reason="transformers < 5.24 cannot generate with a model that has no attention layer",
)
TITANS_QUICK = {"attention": ["full_attention"] * 4, "MAL": ["memory", "sliding_attention"] * 2,
                "MAC": ["memory_as_context"] * 4}  # --quick's architectures and their layer patterns


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)


def test_titans_reproduction_quick_run_writes_table_and_figure(tmp_path):
    out, figure = tmp_path / "titans.md", tmp_path / "titans.png"
    result = run(str(SCRIPTS / "reproduce_titans.py"), "--quick", "--threads", "1", "--out", str(out),
                 "--figure", str(figure), "--workdir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert figure.exists()
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert list(results) == list(TITANS_QUICK)
    table = out.read_text().splitlines()
    for name, layer_types in TITANS_QUICK.items():
        run_dir = tmp_path / "runs" / name
        assert json.loads((run_dir / "config.json").read_text())["mixer_types"] == layer_types  # the row's model
        model = AutoModelForCausalLM.from_pretrained(run_dir)
        scores = {}
        for length in (64, 128):  # --quick's test lengths; 4 held-out rows each, with the seed 10000 + length
            _, scores[str(length)] = scores_by_hand(model, *passkey(4, length, vocab_size=64, key_length=5,
                                                                     seed=10_000 + length))
        assert results[name]["scores"] == scores, name
        row = f"| {name} | {scores['64']:.2f} | {scores['128']:.2f} | "
        assert sum(line.startswith(row) for line in table) == 1, (row, table)


def test_mqar_reproduction_sweeps_learning_rates_in_parallel_workers(tmp_path):
    out, figure = tmp_path / "mqar.md", tmp_path / "mqar.png"
    result = run(str(SCRIPTS / "reproduce_mqar.py"), "--quick", "--threads", "1", "--jobs", "2",
                 "--architectures", "attention,all-GDN,JRT-RNN", "--lr", "1e-3,3e-3", "--out", str(out),
                 "--figure", str(figure), "--workdir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    for name in ("attention", "all-GDN", "JRT-RNN"):
        assert text.count(f"| {name} | ") == 4  # 2 kv x 2 lr each
    assert "attention acc (lr)" in text and "JRT-RNN acc (lr)" in text and figure.exists()
    # each saved model rescored by hand on --quick's held-out rows (64 rows of 64 tokens, vocabulary 128, the
    # recipe's eval seed 1234); JRT-RNN is left out: it reads each row's context as a prefix
    lines = text.splitlines()
    for kv in (4, 8):
        best_row = next(line for line in lines if line.startswith(f"| {kv} | ") and "(" in line).split(" | ")
        for column, name in ((1, "attention"), (2, "all-GDN")):
            accuracies = []
            for lr in (1e-3, 3e-3):
                model = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / f"kv{kv}_{name}_lr{lr:g}")
                accuracy, _ = scores_by_hand(model, *mqar(64, 64, kv, 128, seed=1234))
                assert f"| {kv} | {name} | {lr:g} | {accuracy:.3f} | 5 | " in text, (kv, name, lr, accuracy)
                accuracies.append(accuracy)
            assert best_row[column].startswith(f"{max(accuracies):.3f} ("), (best_row, name, accuracies)
    jrt = json.loads((tmp_path / "runs" / "kv4_JRT-RNN_lr0.001" / "config.json").read_text())
    assert "prefix_linear_attention" in jrt["mixer_types"] and jrt["prefix_lm_objective"]


def test_mqar_reproduction_mixture_trains_one_model_per_architecture_and_evaluates_every_pair_count(tmp_path):
    out, figure = tmp_path / "mqar.md", tmp_path / "mqar.png"
    result = run(str(SCRIPTS / "reproduce_mqar.py"), "--quick", "--threads", "1", "--architectures", "attention",
                 "--lr", "1e-3", "--mixture", "32:2:64,64:8:64", "--out", str(out), "--figure", str(figure),
                 "--workdir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert text.count("| attention | ") == 2 and "64 x (32 tokens, 2 pairs)" in text  # kv 4 and 8, one model
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["mixture4_attention_lr0.001"]
    bad = run(str(SCRIPTS / "reproduce_mqar.py"), "--mixture", "64:4")
    assert bad.returncode != 0 and "--mixture: '64:4' is not seq_len:num_kv_pairs:num_examples" in bad.stderr


def test_titans_reproduction_rejects_an_unknown_architecture():
    result = run(str(SCRIPTS / "reproduce_titans.py"), "--architectures", "MAX")
    assert result.returncode != 0 and "--architectures: ['MAX'] unknown" in result.stderr


def test_memory_benchmark_measures_memlm(tmp_path):
    pytest.importorskip("titans_pytorch")  # the benchmark-only baseline
    result = run(str(SCRIPTS / "bench_memory.py"), "--lengths", "64", "--dim", "32", "--chunk", "16",
                 "--expansion", "2", "--repeats", "1", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "bench.json").read_text())["results"]
    assert {row["impl"] for row in rows} == {"memlm", "memlm-recompute", "titans-pytorch"}
    assert all(row["tokens_per_s"] > 0 and row["peak_mb"] >= 0 and row["gflop"] > 0 for row in rows)
    flops = {row["impl"]: row["gflop"] for row in rows}  # recompute repeats the forward of every chunk
    assert flops["memlm-recompute"] > flops["memlm"]
    assert "| memlm GFLOP | memlm GFLOP/s |" in result.stdout


def test_cola_demo_trains_searches_and_writes_the_table(tmp_path):
    out, figure = tmp_path / "cola.md", tmp_path / "cola.png"
    result = run(str(SCRIPTS / "cola_demo.py"), "--steps", "5", "--layers", "2", "--eval-samples", "3",
                 "--simulations", "4", "--out", str(out), "--figure", str(figure), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "full-model accuracy" in out.read_text() and figure.exists()
    assert len((tmp_path / "w" / "cola" / "samples.jsonl").read_text().splitlines()) == 3


def test_gpu_check_runs_cpu_against_cpu(tmp_path):
    result = run(str(SCRIPTS / "check_gpu.py"), "--device", "cpu", "--json", str(tmp_path / "check.json"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = json.loads((tmp_path / "check.json").read_text())["rows"]
    assert len(rows) == 57 and all(row["passed"] for row in rows)
    assert {"chunk_gated_delta_rule packed", "chunk_kda packed", "chunk_ssd packed", "recurrent_ssd batched",
            "model kda-mla generate", "model mamba2-hybrid generate", "model titans generate"} <= {
        row["check"] for row in rows}


def test_gpu_bench_smoke_run_on_cpu_measures_training_and_says_what_it_skipped(tmp_path):
    result = run(str(SCRIPTS / "bench_gpu.py"), "--device", "cpu", "--quick", "--repeats", "1",
                 "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    train = results["train"]["rows"][0]
    assert train["tokens_per_s"] > 0 and 0 < train["mfu"] < 1 and train["peak_source"] == "fp32 matmul measured here"
    assert "fla" in results["fla"]["skipped"] and "vllm" in results["vllm"]["skipped"]
    assert "SUMMARY: fla not measured | train" in result.stdout


@generates_without_attention
def test_jrt_prompt_reproduction_quick_run_writes_table_and_figure(tmp_path):
    out, figure = tmp_path / "jrt.md", tmp_path / "jrt.png"
    result = run(str(SCRIPTS / "reproduce_jrt_prompt.py"), "--quick", "--threads", "1", "--out", str(out),
                 "--figure", str(figure), "--workdir", str(tmp_path / "runs"), "--architectures",
                 "all-GDN,attention,Based,JRT-RNN")
    assert result.returncode == 0, result.stderr[-2000:]
    assert figure.exists()
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert list(results) == ["all-GDN", "attention", "Based", "JRT-RNN"]
    table = out.read_text()
    for name, r in results.items():  # --quick trains 3 steps; the final loss is the run's last logged loss
        logged = [json.loads(line)["loss"] for line in (tmp_path / "runs" / name / "train_log.jsonl").open()]
        assert r["steps"] == len(logged) == 3 and r["final_loss"] == logged[-1], (name, r, logged)
        assert all(score in {i / 4 for i in range(5)} for score in (r["plain"], r["jrt"]))  # 4 rows, each 0 or 1
        assert f"| {name} | {r['plain']:.3f} | {r['jrt']:.3f} | {r['jrt'] - r['plain']:+.3f} | 3 | " \
            f"{logged[-1]:.3f} | " in table, name
    lines = (tmp_path / "runs" / "train_documents.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 64 and rows[1]["prompt"].startswith("Information about")
    assert not rows[0]["prompt"].startswith("Information") and rows[0]["answer"].startswith(" ")


@generates_without_attention
def test_jrt_prompt_reproduction_bpe_every_token_and_more_questions(tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "jrt.md"
    result = run(str(SCRIPTS / "reproduce_jrt_prompt.py"), "--quick", "--threads", "1", "--out", str(out),
                 "--figure", str(tmp_path / "jrt.png"), "--workdir", str(tmp_path / "runs"), "--architectures",
                 "all-GDN", "--tokenizer", "bpe", "--vocab-size", "300", "--loss", "all", "--questions", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = out.read_text()
    assert "BPE (300 ids" in report and "loss on every token" in report and "2 more questions" in report
    bpe = AutoTokenizer.from_pretrained(tmp_path / "runs" / "bpe_tokenizer")
    trained_with = AutoTokenizer.from_pretrained(tmp_path / "runs" / "all-GDN")
    assert len(bpe) <= 300 and trained_with.get_vocab() == bpe.get_vocab()
    for line in (tmp_path / "runs" / "train_documents.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert row["text"] == row["prompt"] + row["answer"]
        first, *more = row["answer"].split("\n")  # " value", then "Attribute: value" lines
        assert len(more) == 2 and f":{first}" in row["prompt"]
        assert all(f"\n{pair}" in row["prompt"] and not pair.endswith(f":{first}") for pair in more)


def test_jrt_prompt_reproduction_refuses_more_questions_than_attributes(tmp_path):
    result = run(str(SCRIPTS / "reproduce_jrt_prompt.py"), "--quick", "--num-attributes", "3", "--questions", "4",
                 "--out", str(tmp_path / "x.md"))
    assert result.returncode == 2 and "--questions must be in 1..--num-attributes (3), got 4" in result.stderr


def test_doc_recall_by_attribute_tables_each_models_score_per_attribute(tmp_path):
    def results(name: str, scores: list[tuple[str, float]]) -> str:
        records = [{"task": "doc_recall", "variant": "plain", "attribute": a, "score": s, "answers": ["x"],
                    "output": ""} for a, s in scores]
        records.append({"task": "doc_recall", "variant": "jrt", "attribute": "CEO", "score": 1.0})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"records": records}))
        return f"{name}={path}"

    a = results("a", [("CEO", 1.0), ("CEO", 0.0), ("Color", 1.0)])
    b = results("b", [("CEO", 0.0), ("CEO", 0.0), ("Color", 0.0)])
    out = tmp_path / "table.md"
    result = run(str(SCRIPTS / "doc_recall_by_attribute.py"), a, b, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert lines[2] == "| CEO | 2 | 0.50 | 0.00 |" and lines[3] == "| Color | 1 | 1.00 | 0.00 |"
    assert lines[4] == "| **all** | 3 | **0.667** | **0.000** |"
    bad = run(str(SCRIPTS / "doc_recall_by_attribute.py"), f"c={tmp_path / 'missing.json'}")
    assert bad.returncode != 0 and "is not NAME=PATH of an existing results.json" in bad.stderr
    other = results("c", [("CEO", 1.0), ("Color", 1.0)])  # other questions: not comparable column by column
    mismatch = run(str(SCRIPTS / "doc_recall_by_attribute.py"), a, other)
    assert mismatch.returncode != 0 and "c was asked other questions than a" in mismatch.stderr
