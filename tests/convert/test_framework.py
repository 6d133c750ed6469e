"""The conversion framework on memlm's own checkpoints: reading sources, refusing bad ones before any write,
atomic destinations, the hub path, the CLI."""

import fnmatch
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import memlm
from memlm.cli import main
from memlm.convert import ConversionError, convert, from_pretrained
from memlm.convert.checkpoint import HUB_PATTERNS, Checkpoint
from memlm.files import atomic_directory


def tiny_memlm(directory: Path) -> memlm.MemLMForCausalLM:
    config = memlm.MemLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                               tie_word_embeddings=True)
    model = memlm.MemLMForCausalLM(config).eval()
    model.save_pretrained(directory)
    (directory / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    (directory / "generation_config.json").write_text('{"max_new_tokens": 7}')
    return model


def snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def source(tmp_path) -> Path:
    tiny_memlm(tmp_path / "src")
    return tmp_path / "src"


def test_from_pretrained_reads_a_memlm_checkpoint(tmp_path):
    model = tiny_memlm(tmp_path / "src")
    loaded = from_pretrained(tmp_path / "src")
    ids = torch.randint(0, 64, (2, 9))
    assert not loaded.training
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert from_pretrained(tmp_path / "src", torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_convert_writes_the_model_and_copies_the_tokenizer(source, tmp_path):
    result = convert(source, tmp_path / "out")
    assert "4 layers (3 gated_deltanet, 1 full_attention)" in result.summary()
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= written
    assert json.loads((tmp_path / "out" / "generation_config.json").read_text()) == {"max_new_tokens": 7}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left


def test_existing_destination_is_refused_unchanged_and_replaced_with_overwrite(source, tmp_path):
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="exists and is not empty.*overwrite"):
        convert(source, destination)
    assert snapshot(destination) == {Path("keep.txt"): b"mine"}
    convert(source, destination, overwrite=True)
    assert not (destination / "keep.txt").exists() and (destination / "model.safetensors").is_file()
    (tmp_path / "empty").mkdir()
    convert(source, tmp_path / "empty")  # an empty directory is no conversion to lose
    assert (tmp_path / "empty" / "config.json").is_file()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").unlink(), "config.json: missing"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert"})), "model_type='bert'.*supported"),
    (lambda d: (d / "model.safetensors").unlink(), "no weights"),
    (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
     r"weights only as \['pytorch_model.bin'\].*never unpickles"),
    (lambda d: save_file({**load_file(d / "model.safetensors"), "extra.weight": torch.ones(2)},
                         d / "model.safetensors"), r"(?s)do not fit the model.*extra\.weight"),
    (lambda d: (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}})),
     "names shards that are missing"),
])
def test_bad_sources_fail_before_writing(source, tmp_path, damage, message):
    damage(source)
    with pytest.raises(ConversionError, match=message):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_arguments_fail_before_reading(source, tmp_path):
    with pytest.raises(ConversionError, match="no such directory"):
        from_pretrained(tmp_path / "nothing")
    with pytest.raises(ConversionError, match=r"drop=\['wings'\] is unknown; allowed: \['mtp', 'vision'\]"):
        from_pretrained(source, drop=["wings"])
    with pytest.raises(ConversionError, match="to='gpt2' is no export target"):
        convert(source, tmp_path / "out", to="gpt2")
    with pytest.raises(ConversionError, match="revision='main' is for hub names"):
        from_pretrained(source, revision="main")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match="exists and is not a directory"):
        convert(source, tmp_path / "file")


def test_hub_names_download_safetensors_json_and_tokenizer_files_only(source, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(name, revision=None, allow_patterns=None):
        calls.append((name, revision, allow_patterns))
        return str(source)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    checkpoint = Checkpoint.open("someone/tiny-hybrid", revision="v1")
    assert checkpoint.directory == source and checkpoint.config["model_type"] == "memlm"
    assert calls == [("someone/tiny-hybrid", "v1", list(HUB_PATTERNS))]
    pickles = ["pytorch_model.bin", "model.pt", "weights.pth", "optimizer.pkl", "training_args.bin"]
    assert not [name for name in pickles if any(fnmatch.fnmatch(name, pattern) for pattern in HUB_PATTERNS)]

    def offline(name, revision=None, allow_patterns=None):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ConversionError, match="someone/tiny-hybrid: not a local directory.*no network"):
        Checkpoint.open("someone/tiny-hybrid")


def test_sharded_checkpoints_are_read_through_their_index(source):
    tensors = load_file(source / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    (source / "model.safetensors").unlink()
    save_file({n: tensors[n] for n in names[:half]}, source / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[half:]}, source / "model-00002-of-00002.safetensors")
    weight_map = {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)}
    (source / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    read = Checkpoint.open(source).tensors()
    assert sorted(read) == names and all(torch.equal(read[n], tensors[n]) for n in names)


def test_atomic_directory_leaves_nothing_when_the_writer_fails(tmp_path):
    def fail(directory):
        (directory / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_directory(tmp_path / "out", fail)
    assert list(tmp_path.iterdir()) == []


def test_cli_converts_and_prints_a_summary(source, tmp_path, capsys):
    assert main(["convert", str(source), str(tmp_path / "out")]) == 0
    assert "memlm -> memlm: 4 layers" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="memlm convert: destination .* not empty"):
        main(["convert", str(source), str(tmp_path / "out")])
    assert main(["convert", str(source), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
