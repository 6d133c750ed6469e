"""A saved memlm checkpoint loads through transformers' Auto classes with trust_remote_code=True in a process
that never imports memlm (the checkpoint's ``memlm_auto.py`` does), and in stock lm-eval."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memlm.models.auto_code import AUTO_MAP
from memlm.tokenization import byte_level_tokenizer
from tests.models.test_modeling import tiny_model

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_python(code: str, cwd: Path) -> None:
    """Run ``code`` in a fresh interpreter outside the repository (so nothing imports memlm by accident)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | OFFLINE
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_model(layer_types=["linear_attention", "sliding_attention", "linear_attention", "full_attention"],
                       sliding_window=5)
    directory = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(directory)
    return model, directory


def test_checkpoint_names_its_module(saved):
    _, directory = saved
    assert json.loads((directory / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert (directory / "memlm_auto.py").is_file()


def test_loads_with_trust_remote_code_in_a_process_without_memlm(saved, tmp_path):
    model, directory = saved
    ids = torch.randint(1, 61, (2, 12))
    with torch.no_grad():
        expected_logits = model(ids).logits
        expected_tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
    run_python(f"""
        import sys
        import torch
        from safetensors.torch import save_file
        from transformers import AutoConfig, AutoModelForCausalLM

        assert "memlm" not in sys.modules
        config = AutoConfig.from_pretrained({str(directory)!r}, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True).eval()
        ids = torch.tensor({ids.tolist()})
        with torch.no_grad():
            logits = model(ids).logits
            tokens = model.generate(ids, max_new_tokens=6, do_sample=False)
        save_file({{"logits": logits, "tokens": tokens}}, "out.safetensors")
        model.save_pretrained("again")  # a checkpoint loaded this way saves as memlm writes one
        import memlm
        assert memlm.MemLMForCausalLM._auto_class is None  # memlm's own classes are left as they were
    """, tmp_path)
    out = load_file(tmp_path / "out.safetensors")
    torch.testing.assert_close(out["logits"], expected_logits)
    assert torch.equal(out["tokens"], expected_tokens)
    assert json.loads((tmp_path / "again" / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert (tmp_path / "again" / "memlm_auto.py").read_text() == (directory / "memlm_auto.py").read_text()


def test_stock_lm_eval_loads_it_with_trust_remote_code(tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    import memlm

    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    config = memlm.MemLMConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = memlm.MemLMForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    tasks_dir, metadata = ROOT / "lm_eval_tasks", {"num_examples": 2, "context_lengths": [60]}
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf",
        "--model_args", f"pretrained={tmp_path / 'model'},trust_remote_code=True",
        "--include_path", str(tasks_dir), "--tasks", "memlm_niah", "--limit", "2", "--log_samples",
        "--metadata", json.dumps(metadata), "--output_path", str(tmp_path / "out"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | OFFLINE
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (samples_file,) = (tmp_path / "out").glob("**/samples_memlm_niah_*.jsonl")
    responses = [json.loads(line)["resps"] for line in samples_file.read_text().splitlines()]
    # the same task, in this process, with the model object: the same responses
    reference = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok), tasks=["memlm_niah"], limit=2,
                                task_manager=TaskManager(include_path=str(tasks_dir), metadata=metadata),
                                log_samples=True)
    assert responses == [sample["resps"] for sample in reference["samples"]["memlm_niah"]]
