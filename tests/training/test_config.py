import pytest
import yaml

from memlm.training.config import apply_override, config_from_dict, load_config

MINIMAL = {"output_dir": "/tmp/x", "train": {"max_steps": 5}, "model": {"config": {"hidden_size": 32}},
           "data": {"source": "text", "files": ["a.txt"]}}


def test_minimal_config_gets_defaults():
    config = config_from_dict(MINIMAL)
    assert config.train.batch_size == 8 and config.schedule.kind == "cosine"
    assert "in_proj_qkv" in config.lora.target_modules


def test_load_with_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    config = load_config(path, ["train.max_steps=20", "output_dir=/tmp/run", "optimizer.betas=[0.9, 0.99]",
                                "optimizer.lr=2e-3"])
    assert config.train.max_steps == 20 and config.output_dir == "/tmp/run" and config.optimizer.lr == 2e-3
    assert config.optimizer.betas == [0.9, 0.99]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["train.max_step=3"], r"unknown key\(s\) \['train.max_step'\] in train; valid keys: \["),
        (["bogus=1"], r"unknown key\(s\) \['bogus'\]"),
        (["train.max_steps=ten"], "train.max_steps must be int, got 'ten'"),
        (["train.max_steps=0"], "train.max_steps must be positive"),
        (["data.source=csv"], r"data.source='csv' is not allowed; choose from \['text'"),
        (["model.pretrained=gpt2"], "exactly one of model.config"),
        (["data.files=null"], "needs data.files"),
        (["eval.tasks=[mqar]"], "needs data.source='mqar'"),
        (["train.precision=fp8"], "train.precision='fp8'"),
        (["train=3"], "train must be a mapping"),
        (["checkpoint.every=-1"], r"checkpoint.every=-1 is not allowed: a finite number in \[0, inf\)"),
        (["schedule.warmup_steps=-5"], r"schedule.warmup_steps=-5 is not allowed"),
        (["optimizer.lr=0"], r"optimizer.lr=0.0 is not allowed: a finite number in \(0, inf\)"),
        (["optimizer.lr=-1e-3"], r"optimizer.lr=-0.001"),
        (["optimizer.lr=.nan"], r"optimizer.lr=nan"),
        (["optimizer.eps=0"], r"optimizer.eps=0.0"),
        (["optimizer.weight_decay=-0.1"], r"optimizer.weight_decay=-0.1"),
        (["optimizer.betas=[0.9, 1.5]"], r"optimizer.betas=1.5 is not allowed: a finite number in \[0, 1\)"),
        (["optimizer.betas=[0.9]"], r"optimizer.betas must be two numbers"),
        (["schedule.min_lr_ratio=2"], r"schedule.min_lr_ratio=2.0"),
        (["train.max_grad_norm=-1"], r"train.max_grad_norm=-1.0"),
        (["train.seed=-1"], r"train.seed=-1"),
        (["lora.dropout=1"], r"lora.dropout=1.0 is not allowed: a finite number in \[0, 1\)"),
        (["model.config.hiden_size=64"], r"unknown key model.config.hiden_size \(no MemLMConfig field\); did you "
                                         r"mean 'hidden_size'"),
        (["model.config.my_tag=1"], r"unknown key model.config.my_tag"),  # far from every field: refused too
        (["model.config.feature_dim=8"], r"unknown key model.config.feature_dim"),  # a jrt_rnn argument only
        (["model.config.num_attention_heads=3"], r"model.config: hidden_size=32 is not divisible by "
                                                 r"num_attention_heads=3"),
        (["model.config.rms_norm_eps=0"], r"model.config: rms_norm_eps=0 is not allowed"),
        (["model.config.pad_token_id=-1"], r"model.config: pad_token_id=-1"),
        (["model.config.memory_rule={forgetting: 'no'}"], r"model.config: .*forgetting='no' is not allowed"),
        (["train.max_steps=[1"], r"override 'train.max_steps=\[1': the value '\[1' is not valid YAML"),
    ],
)
def test_bad_configs_fail_with_clear_errors(tmp_path, change, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(ValueError, match=message):
        load_config(path, change)


def test_missing_required_key_and_file():
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['train'\]"):
        config_from_dict({"output_dir": "x"})
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['train.max_steps'\]"):
        config_from_dict({**MINIMAL, "train": {}})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("/no/such/config.yaml")


def test_malformed_override():
    with pytest.raises(ValueError, match="must look like 'section.key=value'"):
        apply_override({}, "train.max_steps")


def test_model_config_is_checked_before_any_data_is_read(tmp_path):
    """data.files name no file, so a check that waited for the data would fail on the data instead."""
    with pytest.raises(ValueError, match="model.config: num_hidden_layers must be a positive integer, got 0"):
        config_from_dict({**MINIMAL, "model": {"config": {"hidden_size": 32, "num_hidden_layers": 0}}})


def test_jrt_rnn_preset_recipe_builds_without_a_mask_token_and_takes_its_arguments():
    model = {"preset": "jrt_rnn", "config": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                             "feature_dim": 0}}
    with pytest.raises(ValueError, match="model.config: linear_key_head_dim must be a positive integer, got 0"):
        config_from_dict({**MINIMAL, "model": model})  # feature_dim is a key of the preset; its value is checked
    model["config"]["feature_dim"] = 8
    assert config_from_dict({**MINIMAL, "model": model}).model.config["feature_dim"] == 8
    with pytest.raises(ValueError, match="did you mean 'feature_dim'"):
        config_from_dict({**MINIMAL, "model": {**model, "config": {**model["config"], "feature_dims": 8}}})


def test_overrides_anywhere_on_the_command_line():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "recipes" / "train.py"
    spec = importlib.util.spec_from_file_location("recipes_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for argv in (["--config", "c.yaml", "a.b=1", "c=2"], ["a.b=1", "--config", "c.yaml", "c=2"],
                 ["a.b=1", "--config", "c.yaml", "--stop-at", "3", "c=2"]):
        args = module.parse_args(argv)
        assert args.config == "c.yaml" and args.overrides == ["a.b=1", "c=2"], argv
