"""memlm's lm-evaluation-harness tasks (lm_eval_tasks), run offline end to end on a tiny memlm model."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import memlm  # noqa: E402
from memlm.tokenization import byte_level_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "lm_eval_tasks"
CLI = ROOT / "scripts" / "lm_eval_cli.py"
METRICS = {
    "memlm_doc_recall": "contains",
    "memlm_doc_recall_twice": "contains",
    "memlm_niah": "niah_score",
    "memlm_niah_twice": "niah_score",
    "memlm_icl_label_remapping": "exact_match",
    "memlm_icl_associative_recall": "exact_match",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def utils():
    spec = importlib.util.spec_from_file_location("memlm_lm_eval_task_utils", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model():
    tok = byte_level_tokenizer()
    config = memlm.MemLMConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, hybrid_ratio="3:1",
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    return memlm.MemLMForCausalLM(config).eval(), tok


def assert_scores(results, tasks):
    for task in tasks:
        value = results["results"][task][f"{METRICS[task]},none"]
        assert 0.0 <= value <= 1.0, (task, value)


def test_datasets_are_deterministic_and_sized(utils):
    sizes = {"num_examples": 5, "num_shots": 4, "context_lengths": "60,80", "depths": [0, 1], "pretrained": "x"}
    for name in ("doc_recall", "doc_recall_twice", "icl_label_remapping", "icl_associative_recall", "niah",
                 "niah_twice"):
        first, again = getattr(utils, name)(**sizes), getattr(utils, name)(**sizes)
        assert list(first) == ["test"]
        assert first["test"].to_list() == again["test"].to_list()
        assert len(first["test"]) == (5 * 2 * 2 if name.startswith("niah") else 5)
        for doc in first["test"]:
            assert doc["target"] == doc["answers"][0]
            assert doc["target"] in doc["prompt"]
    plain, twice = utils.doc_recall(num_examples=3)["test"], utils.doc_recall_twice(num_examples=3)["test"]
    for a, b in zip(plain, twice, strict=True):
        assert a["answers"] == b["answers"] and b["prompt"].startswith("Information about ")
    for a, b in zip(utils.niah(**sizes)["test"], utils.niah_twice(**sizes)["test"], strict=True):
        question = a["prompt"].split("\n")[1].split("?")[0] + "?"
        assert a["answers"] == b["answers"] and b["prompt"].startswith(question) and b["prompt"].count("\n") == 1
    cells = [(doc["context_length"], doc["depth"]) for doc in utils.niah(**sizes)["test"]][:4]
    assert cells == [(60, 0.0), (60, 1.0), (80, 0.0), (80, 1.0)]  # interleaved: --limit keeps every cell
    assert len(utils.doc_recall()["test"]) == 100 and len(utils.niah()["test"]) == 96


def test_scores(utils):
    doc = {"answers": ["555-0259"], "target": "555-0259"}
    assert utils.process_contains(doc, [" 555-0259 ok\n"]) == {"contains": 1.0}
    assert utils.process_contains(doc, ["\n555-0259"]) == {"contains": 0.0}
    assert utils.process_niah({"answers": ["12", "34"]}, [" 12 and then"]) == {"niah_score": 0.5}
    assert utils.process_exact_match({"target": "foo"}, [" foo\nbar: baz"]) == {"exact_match": 1.0}
    assert utils.process_exact_match({"target": "foo"}, [" Foo"]) == {"exact_match": 0.0}


class OracleLM(LM):
    """Answers every generation request with its doc's gold answers, as a perfect model would."""

    def generate_until(self, requests, disable_tqdm=False):
        return [" " + ", ".join(request.doc["answers"]) for request in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_group_scores_a_perfect_model_one():
    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"num_examples": 3, "context_lengths": [50]})
    results = simple_evaluate(model=OracleLM(), tasks=["memlm_recall"], task_manager=manager)
    assert sorted(results["group_subtasks"]["memlm_recall"]) == sorted(METRICS)
    for task, metric in METRICS.items():
        assert results["results"][task][f"{metric},none"] == 1.0, task
    assert results["n-samples"]["memlm_niah"]["effective"] == 3 * 3  # one length, three depths
    assert results["n-samples"]["memlm_niah_twice"]["effective"] == 3 * 3


def test_python_route_with_a_memlm_model_object():
    model, tok = tiny_model()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=4)
    manager = TaskManager(include_path=str(TASKS_DIR))
    results = simple_evaluate(model=lm, tasks=["memlm_recall"], task_manager=manager, limit=4)
    assert_scores(results, METRICS)
    assert all(results["n-samples"][task]["effective"] == 4 for task in METRICS)


def test_cli_wrapper_on_a_saved_memlm_directory(tmp_path):
    model, tok = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    tasks = ["memlm_doc_recall_twice", "memlm_niah"]
    command = [
        sys.executable, str(CLI), "run", "--model", "hf", "--model_args", f"pretrained={tmp_path / 'model'}",
        "--include_path", str(TASKS_DIR), "--tasks", ",".join(tasks), "--limit", "2",
        "--metadata", json.dumps({"num_examples": 2, "context_lengths": [60]}), "--output_path", str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=tmp_path, env={**os.environ, **OFFLINE}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("**/results_*.json")
    assert_scores(json.loads(path.read_text()), tasks)
