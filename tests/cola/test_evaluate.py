"""python -m memlm.cola.evaluate on a tiny saved model: outputs, resumption, bad input."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from memlm.cola.evaluate import main, read_samples
from memlm.tokenization import byte_level_tokenizer


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_samples(path, samples):
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def test_evaluation_writes_samples_summary_and_plot_and_resumes(saved_model, tmp_path):
    data = write_samples(tmp_path / "data.jsonl", [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(3)])
    out = tmp_path / "out"
    args = ["--model", str(saved_model), "--data", str(data), "--out", str(out), "--simulations", "8",
            "--max-block", "2"]
    summary = main(args + ["--max-samples", "2"])
    assert summary["samples"] == 2 and (out / "chain_lengths.png").exists()
    first = (out / "samples.jsonl").read_text().splitlines()
    summary = main(args)  # resumes: the two finished samples are kept, only the third runs
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert lines[:2] == first and len(lines) == 3 and summary["samples"] == 3
    record = json.loads(lines[2])
    assert set(record) >= {"full_correct", "best_path", "best_reward", "shortest_correct_path", "layers_saved"}
    records = [json.loads(line) for line in lines]
    assert summary["full_model_accuracy"] == sum(r["full_correct"] for r in records) / 3  # the records' mean
    assert sum(summary["best_chain_length_histogram"].values()) == 3
    assert "full-model accuracy" in (out / "summary.md").read_text()


@pytest.mark.parametrize("content, message", [("not json\n", "not JSON"), ('{"prompt": "x"}\n', "answer"),
                                              ("\n", "no samples")])
def test_bad_sample_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_samples(str(path), None)


def test_pickled_weights_are_never_loaded(tmp_path):
    tokenizer = byte_level_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4))
    model.config.save_pretrained(tmp_path / "pickled")  # only a pickled checkpoint, as older transformers wrote
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    tokenizer.save_pretrained(tmp_path / "pickled")
    data = write_samples(tmp_path / "data.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(OSError, match="safetensors"):
        main(["--model", str(tmp_path / "pickled"), "--data", str(data), "--out", str(tmp_path / "out")])
