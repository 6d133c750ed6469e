import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import memlm
from memlm.data import passkey
from memlm.tokenization import byte_level_tokenizer
from memlm.training import load_config, train
from memlm.training.builders import apply_lora
from memlm.training.config import config_from_dict
from tests.eval.test_recall import scores_by_hand

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
              "hybrid_ratio": "3:1"}
WORDS = ["the", "a", "memory", "state", "layer", "token", "chunk", "model", "recall", "attention", "linear", "gate"]


def text_corpus(path: Path, num_docs: int = 8) -> Path:  # few rows: runs cross epochs
    generator = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(num_docs):
        length = int(torch.randint(3, 30, (1,), generator=generator))
        lines.append(" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (length,), generator=generator)))
    path.write_text("\n".join(lines) + "\n")
    return path


def text_recipe(tmp_path: Path, **sections) -> dict:
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "model": {"config": TINY_MODEL},
        "tokenizer": {"kind": "byte"},
        "data": {"source": "text", "files": [str(text_corpus(tmp_path / "corpus.txt"))], "seq_len": 64},
        "optimizer": {"lr": 1e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 2},
        "train": {"max_steps": 6, "batch_size": 2, "gradient_accumulation_steps": 2},
        "logging": {"trackers": []},
    }
    for name, values in sections.items():
        recipe[name] = {**recipe.get(name, {}), **values}
    return recipe


@pytest.mark.parametrize("layer_types", [["memory", "sliding_attention"] * 2,
                                         ["memory_as_context", "full_attention"] * 2])
def test_text_recipe_trains_a_titans_model_on_packed_documents(tmp_path, layer_types):
    config = {key: value for key, value in TINY_MODEL.items() if key != "hybrid_ratio"}
    config.update(layer_types=layer_types, sliding_window=8, memory_chunk_size=16)
    result = train(config_from_dict(text_recipe(tmp_path, model={"config": config})))
    assert result.summary["steps"] == 6
    assert_starts_uniform_and_learns(losses(tmp_path / "run"), uniform=math.log(len(byte_level_tokenizer())))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert loaded.config.mixer_types == layer_types  # mixer names given where layer types go (memlm's old format)


@pytest.mark.parametrize("linear_attn_type", ["gla", "deltanet"])
def test_text_recipe_trains_a_hybrid_of_another_linear_mixer(tmp_path, linear_attn_type):
    """Any registered linear mixer is a recipe's linear_attn_type (packed documents: the mixers' cu_seqlens)."""
    config = {**TINY_MODEL, "linear_attn_type": linear_attn_type}
    result = train(config_from_dict(text_recipe(tmp_path, model={"config": config})))
    assert result.summary["steps"] == 6
    assert_starts_uniform_and_learns(losses(tmp_path / "run"), uniform=math.log(len(byte_level_tokenizer())))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert loaded.config.mixer_types == [linear_attn_type] * 3 + ["full_attention"]


def test_passkey_recipe_reports_token_and_key_accuracy(tmp_path):
    recipe = text_recipe(
        tmp_path,
        tokenizer={"kind": "integer"},
        data={"source": "passkey", "seq_len": 48, "passkey": {"num_examples": 32, "vocab_size": 30, "key_length": 3}},
        eval={"tasks": ["passkey"], "num_examples": 8},
    )
    del recipe["data"]["files"]
    config = config_from_dict(recipe)
    result = train(config)
    # the eval rows: 8 new passkey rows drawn with eval.seed, scored by hand on the trained model
    eval_rows = passkey(num_examples=8, seq_len=48, vocab_size=30, key_length=3, seed=config.eval.seed)
    token_accuracy, exact_match = scores_by_hand(result.model, *eval_rows)
    assert result.summary["eval"] == {"passkey_token_accuracy": token_accuracy, "passkey_exact_match": exact_match}


def losses(output_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(output_dir) / "train_log.jsonl").read_text().splitlines()]


def assert_starts_uniform_and_learns(logged: list[float], uniform: float) -> None:
    """The first logged loss is the loss of a uniform prediction (a new model's logits are near 0: ``ln V``
    per token), and six optimizer steps lower it (gradients reach the weights)."""
    assert logged[0] == pytest.approx(uniform, abs=0.1)
    assert logged[-1] < logged[0] - 0.1, logged


def test_text_recipe_trains_and_saves_model_with_tokenizer(tmp_path):
    result = train(config_from_dict(text_recipe(tmp_path, logging={"trackers": ["tensorboard"]})))
    out = tmp_path / "run"
    assert result.summary["steps"] == 6 and len(losses(out)) == 6
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(model, memlm.MemLMForCausalLM) and len(tokenizer) == model.config.vocab_size
    ids = torch.tensor([tokenizer("the memory")["input_ids"]])
    torch.testing.assert_close(model(ids).logits, result.model(ids).logits)
    assert any(out.glob("**/events.out.tfevents*")), "tensorboard logs are written"


def test_json_prompt_completion_recipe(tmp_path):
    rows = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(6) for b in range(6)]
    (tmp_path / "sums.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = text_recipe(tmp_path, data={"source": "json", "files": [str(tmp_path / "sums.jsonl")], "seq_len": 32,
                                         "text_field": "question", "completion_field": "answer"})
    assert train(config_from_dict(recipe)).summary["steps"] == 6
    recipe["data"]["completion_field"] = "response"
    with pytest.raises(ValueError, match="data.completion_field='response' is not a column of the data"):
        train(config_from_dict(recipe), overwrite=True)  # another recipe in the same output_dir


def test_max_minutes_ends_training_saves_and_evaluates(tmp_path):
    recipe = text_recipe(tmp_path)
    recipe["train"]["max_minutes"] = 1e-9  # passed after the first optimizer step
    result = train(config_from_dict(recipe))
    assert result.summary["steps"] == 1 and result.summary["stopped_by_time"]
    assert len(losses(tmp_path / "run")) == 1
    assert "saved_to" in result.summary  # the final model is written as at max_steps
    AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="train.max_minutes must be positive"):
        config_from_dict({**recipe, "train": {**recipe["train"], "max_minutes": 0}})


@pytest.mark.parametrize("streaming", [False, True])
def test_exact_resume_matches_uninterrupted_run(tmp_path, streaming):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    uninterrupted = text_recipe(tmp_path / "a", checkpoint={"every": 2}, data={"streaming": streaming})
    full = train(config_from_dict(uninterrupted))
    interrupted = text_recipe(tmp_path / "b", checkpoint={"every": 2}, data={"streaming": streaming})
    first = train(config_from_dict(interrupted), stop_at=3)
    assert first.summary["steps"] == 3
    resumed = train(config_from_dict({**interrupted, "checkpoint": {"every": 2, "resume_from": "latest"}}))
    assert resumed.summary["steps"] == 6
    expected, got = losses(tmp_path / "a" / "run"), losses(tmp_path / "b" / "run")
    assert len(expected) == len(got) == 6
    assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) <= 1e-5
    for name, param in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], param, atol=1e-5, rtol=0)


def test_lora_train_merge_and_reload(tmp_path):
    base_dir = tmp_path / "base"
    memlm.MemLMForCausalLM(memlm.MemLMConfig(vocab_size=259, **TINY_MODEL)).save_pretrained(base_dir)
    byte_level_tokenizer().save_pretrained(base_dir)
    recipe = text_recipe(tmp_path, tokenizer={"kind": "pretrained"}, optimizer={"lr": 1e-2},
                         lora={"enabled": True, "r": 4})
    recipe["model"] = {"pretrained": str(base_dir)}
    result = train(config_from_dict(recipe))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert type(merged) is memlm.MemLMForCausalLM  # a plain model: the adapters are merged in
    changed = {name for name, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[name])}
    assert any("in_proj_qkv" in n for n in changed) and any("self_attn" not in n and "q_proj" in n for n in changed)
    assert not any("embed_tokens" in n or "norm" in n for n in changed)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(merged(ids).logits, result.model(ids).logits)


def test_lora_targets_cover_standard_hf_models():
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    config = config_from_dict({"output_dir": "x", "train": {"max_steps": 1}, "model": {"pretrained": "x"},
                               "data": {"source": "text", "files": ["x"]}, "lora": {"enabled": True}})
    wrapped = apply_lora(llama, config)
    names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in wrapped.named_parameters() if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= names


def mqar_recipe_file(tmp_path: Path, batch_size: int) -> Path:
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "model": {"config": TINY_MODEL},
        "tokenizer": {"kind": "integer"},
        "data": {"source": "mqar", "seq_len": 32, "mqar": {"num_examples": 64, "num_kv_pairs": 4, "vocab_size": 40}},
        "optimizer": {"lr": 1e-3},
        "train": {"max_steps": 3, "batch_size": batch_size},
        "logging": {"trackers": []},
        "eval": {"tasks": ["mqar"], "num_examples": 16},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_two_process_data_parallel_equals_single_process(tmp_path):
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    worker = str(REPO / "tests" / "training" / "ddp_worker.py")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
         worker, str(mqar_recipe_file(tmp_path / "ddp", batch_size=2)), str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, worker, str(mqar_recipe_file(tmp_path / "single", batch_size=4)), str(tmp_path / "single")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    rank0 = torch.load(tmp_path / "ddp" / "params_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "params_rank1.pt", weights_only=True)
    alone = torch.load(tmp_path / "single" / "params_rank0.pt", weights_only=True)
    for name, param in rank0.items():
        assert torch.equal(param, rank1[name]), name
        torch.testing.assert_close(param, alone[name], atol=1e-5, rtol=1e-4)
    ddp_losses, single_losses = losses(tmp_path / "ddp" / "run"), losses(tmp_path / "single" / "run")
    assert len(ddp_losses) == 3
    assert max(abs(a - b) for a, b in zip(ddp_losses, single_losses, strict=True)) <= 1e-5


def test_recipe_cli_reports_bad_config(tmp_path):
    path = mqar_recipe_file(tmp_path, batch_size=2)
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "train.py"), "--config", str(path),
                             "train.max_stepz=3"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key(s) ['train.max_stepz']" in result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes" / "configs").glob("*.yaml")
                                         if not p.name.startswith("distill_")))  # tests/distill: recipes/distill.py's
def test_shipped_recipes_are_valid(name):
    load_config(REPO / "recipes" / "configs" / name)


ACCELERATE_CONFIGS = {  # file: (distributed_type, num_processes, mixed_precision), as the README describes them
    "cpu.yaml": ("NO", 1, "no"),
    "single_gpu.yaml": ("NO", 1, "bf16"),
    "multi_gpu.yaml": ("MULTI_GPU", 8, "bf16"),
    "fsdp.yaml": ("FSDP", 8, "bf16"),
}


def test_every_shipped_accelerate_config_is_listed():
    assert sorted(p.name for p in (REPO / "recipes" / "accelerate").glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "recipes" / "accelerate" / name
    loaded = load_config_from_file(str(path))
    distributed_type, num_processes, mixed_precision = ACCELERATE_CONFIGS[name]
    assert (loaded.distributed_type, loaded.num_processes, loaded.mixed_precision) == \
        (distributed_type, num_processes, mixed_precision)  # DistributedType is a str enum
    written = yaml.safe_load(path.read_text())
    kept = loaded.to_dict()
    for key, value in written.items():  # accelerate keeps every key the file sets, with its value
        assert kept[key] == value, key


def test_json_parquet_and_local_hub_sources_give_the_same_rows(tmp_path):
    from datasets import Dataset

    from memlm.training.builders import build_dataset

    texts = text_corpus(tmp_path / "corpus.txt").read_text().splitlines()
    Dataset.from_dict({"body": texts}).to_json(tmp_path / "docs.jsonl")
    Dataset.from_dict({"body": texts}).to_parquet(tmp_path / "docs.parquet")
    (tmp_path / "folder").mkdir()
    Dataset.from_dict({"body": texts}).to_json(tmp_path / "folder" / "train.jsonl")
    tokenizer = byte_level_tokenizer()
    sources = {
        "text": {"source": "text", "files": [str(tmp_path / "corpus.txt")], "text_field": "text"},
        "json": {"source": "json", "files": [str(tmp_path / "docs.jsonl")], "text_field": "body"},
        "parquet": {"source": "parquet", "files": [str(tmp_path / "docs.parquet")], "text_field": "body"},
        "hub": {"source": "hub", "name": str(tmp_path / "folder"), "text_field": "body"},  # a local dataset folder
    }
    rows = {}
    for name, data in sources.items():
        config = config_from_dict({"output_dir": "x", "train": {"max_steps": 1}, "model": {"config": {}},
                                   "data": {**data, "seq_len": 32}})
        rows[name] = build_dataset(config, tokenizer)[0]["input_ids"]
    assert rows["json"] == rows["text"] == rows["parquet"] == rows["hub"]


def test_wrong_text_field_is_reported(tmp_path):
    from memlm.training.builders import build_dataset

    config = config_from_dict({"output_dir": "x", "train": {"max_steps": 1}, "model": {"config": {}},
                               "data": {"source": "text", "files": [str(text_corpus(tmp_path / "c.txt"))],
                                        "text_field": "content"}})
    with pytest.raises(ValueError, match="data.text_field='content' is not a column"):
        build_dataset(config, byte_level_tokenizer())


def test_bpe_tokenizer_is_trained_and_saved_with_the_model(tmp_path):
    recipe = text_recipe(tmp_path, tokenizer={"kind": "bpe", "vocab_size": 300}, train={"max_steps": 2})
    train(config_from_dict(recipe))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run")
    assert len(tokenizer) <= 300 and len(tokenizer("the memory state")["input_ids"]) < len("the memory state")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.vocab_size == len(tokenizer)


def test_needle_documents_are_a_data_source(tmp_path):
    recipe = text_recipe(tmp_path, train={"max_steps": 2})
    recipe["data"] = {"source": "niah", "seq_len": 128,
                      "niah": {"context_lengths": [60, 100], "depths": [0.0, 1.0], "num_examples_per_cell": 2}}
    from memlm.training.builders import build_dataset

    config = config_from_dict(recipe)
    tokenizer = byte_level_tokenizer()
    rows = build_dataset(config, tokenizer)[0]
    text = tokenizer.decode([t for r in rows["input_ids"] for t in r])
    assert text.count("One of the special magic numbers for") == 8
    assert train(config).summary["steps"] == 2


def test_jrt_rnn_preset_trains_with_the_prefix_lm_objective(tmp_path):
    config = {"num_hidden_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "sliding_window": 8,
              "feature_dim": 8}
    recipe = text_recipe(tmp_path, model={"config": config, "preset": "jrt_rnn"}, data={"prefix_length": 8})
    result = train(config_from_dict(recipe))
    assert result.summary["steps"] == 6
    # the prefix-LM loss: next-token loss plus 0.25 times the masked-token loss, each ln(V) at the start
    assert_starts_uniform_and_learns(losses(tmp_path / "run"), uniform=1.25 * math.log(len(byte_level_tokenizer())))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert loaded.config.prefix_lm_objective and loaded.config.mask_token_id == 256  # the byte tokenizer's pad
    assert loaded.reads_prefix and "prefix_linear_attention" in loaded.config.mixer_types
    recipe["model"] = {"config": TINY_MODEL}
    with pytest.raises(ValueError, match="data.prefix_length=8 is set, but the model's config has no prefix_lm"):
        train(config_from_dict(recipe), overwrite=True)


def test_mqar_mixture_trains_on_the_mixture_and_evaluates_on_the_given_config(tmp_path):
    from memlm.training.builders import build_dataset, build_tokenizer

    mixture = [{"num_examples": 6, "seq_len": 16, "num_kv_pairs": 2},
               {"num_examples": 4, "seq_len": 32, "num_kv_pairs": 4}]
    raw = yaml.safe_load(mqar_recipe_file(tmp_path, batch_size=2).read_text())
    raw["data"]["mqar"] = {"mixture": mixture, "num_kv_pairs": 6, "vocab_size": 40}
    config = config_from_dict(raw)
    rows, eval_rows = build_dataset(config, build_tokenizer(config))
    assert len(rows) == 10 and rows[0]["input_ids"].shape == (32,)
    eval_ids, eval_labels = eval_rows["mqar"]
    assert eval_ids.shape == (16, 32) and ((eval_labels != -100).sum(-1) == 6).all()
    del raw["data"]["mqar"]["num_kv_pairs"]
    with pytest.raises(ValueError, match=r"data.mqar still needs \['num_kv_pairs'\]"):
        config_from_dict(raw)


def test_deepspeed_and_merged_lora_under_fsdp_are_refused_by_name(tmp_path):
    from accelerate.utils import DistributedType

    from memlm.training.trainer import check_distributed_type

    config = config_from_dict(text_recipe(tmp_path, lora={"enabled": True}))
    with pytest.raises(ValueError, match="DeepSpeed is not supported.*FSDP2"):
        check_distributed_type(DistributedType.DEEPSPEED, config)
    with pytest.raises(ValueError, match="lora.merge=true needs the whole model"):
        check_distributed_type(DistributedType.FSDP, config)
    for allowed in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distributed_type(allowed, config)
