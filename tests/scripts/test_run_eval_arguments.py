"""scripts/run_eval.py checks every argument, --out included, before it loads a model; it loads safetensors only, and
writes its report atomically."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import memlm
from memlm.eval.report import write_report
from memlm.files import atomic_write
from memlm.tokenization import byte_level_tokenizer

REPO = Path(__file__).resolve().parents[2]


def load_run():
    spec = importlib.util.spec_from_file_location("run_eval", REPO / "scripts" / "run_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RUN = load_run()


def tiny_model(path: Path, safetensors: bool = True) -> Path:
    torch.manual_seed(0)
    tokenizer = byte_level_tokenizer()
    config = memlm.MemLMConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               layer_types=["full_attention"], pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    model = memlm.MemLMForCausalLM(config)
    if safetensors:
        model.save_pretrained(path)
    else:  # only a pickled checkpoint, as older transformers wrote (memlm must never load it)
        config.save_pretrained(path)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    return path


def fails_with(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        RUN.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tasks", ","], "--tasks names no task"),
        (["--tasks", "doc_recall,bogus"], "unknown task(s) ['bogus']"),
        (["--tasks", "niah", "--context-lengths", ","], "--context-lengths must be positive"),
        (["--tasks", "niah", "--depths", "0,1.5"], "--depths must be fractions of the context in [0, 1]"),
        (["--tasks", "mqar"], "task 'mqar' needs --mqar-vocab-size"),
        (["--tasks", "mqar", "--mqar-vocab-size", "64", "--mqar-seq-len", "63"], "seq_len must be even"),
        (["--tasks", "mqar", "--mqar-vocab-size", "16", "--mqar-seq-len", "32"], "vocab_size must be at least"),
        (["--tasks", "doc_recall", "--batch-size", "0"], "--batch-size must be positive"),
        (["--tasks", "doc_recall", "--device", "nodevice"], "--device 'nodevice'"),
    ],
)
def test_bad_arguments_fail_before_the_model_is_read(tmp_path, capsys, arguments, message):
    """The model directory does not exist: an argument checked after loading would fail on the model instead."""
    fails_with(["--model", str(tmp_path / "no_model"), "--out", str(tmp_path / "out"), *arguments], message, capsys)


def test_out_is_checked_before_the_model_is_read(tmp_path, capsys):
    model = ["--model", str(tmp_path / "no_model"), "--tasks", "doc_recall"]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    fails_with([*model, "--out", str(a_file)], "exists and is not a directory", capsys)
    fails_with([*model, "--out", str(a_file / "sub" / "out")], "cannot be created", capsys)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text("{}")
    fails_with([*model, "--out", str(earlier)], "already holds ['results.json'] of an earlier evaluation", capsys)
    assert (earlier / "results.json").read_text() == "{}"


def test_mqar_vocabulary_larger_than_the_model_fails_before_the_weights_load(tmp_path, capsys):
    config_only = tmp_path / "config_only"  # no weights: loading them would fail with another error
    memlm.MemLMConfig(vocab_size=48, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      layer_types=["full_attention"]).save_pretrained(config_only)
    fails_with(["--model", str(config_only), "--tasks", "mqar", "--mqar-vocab-size", "64", "--mqar-seq-len", "32",
                "--out", str(tmp_path / "out")], "--mqar-vocab-size 64 is larger than the model's vocab_size 48",
               capsys)
    assert not (tmp_path / "out").exists()


def test_only_safetensors_weights_are_loaded(tmp_path):
    model = tiny_model(tmp_path / "pickled", safetensors=False)
    with pytest.raises(OSError, match="safetensors"):
        RUN.main(["--model", str(model), "--tasks", "icl_label_remapping", "--num-examples", "1",
                  "--max-new-tokens", "1", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert not (tmp_path / "out").exists()


def test_a_good_run_writes_its_report(tmp_path):
    model = tiny_model(tmp_path / "model")
    RUN.main(["--model", str(model), "--tasks", "icl_label_remapping", "--num-examples", "2", "--max-new-tokens", "2",
              "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert json.loads((tmp_path / "out" / "results.json").read_text())["summary"][0]["examples"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]  # no temp files


def test_report_files_are_replaced_atomically(tmp_path):
    records = [{"task": "t", "variant": "plain", "context_length": 8, "depth": 0.5, "score": 1.0}]
    paths = write_report(records, tmp_path)
    before = paths["json"].read_text()

    def fail_halfway(temporary):
        Path(temporary).write_text('{"partial": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(paths["json"], fail_halfway)
    assert paths["json"].read_text() == before  # the old report is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())  # no temp file left
