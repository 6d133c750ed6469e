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
