"""The distillation recipe's configuration: every bad value fails before any work, naming key, value and what is
allowed; the shipped recipe loads; the CLI takes the training recipes' shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memlm.distill.config import check_teacher, config_from_dict, load_config
from memlm.distill.run import distill
from tests.distill.recipe_helpers import distill_recipe, save_teacher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "llama")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes" / "configs").glob("distill_*.yaml")))
def test_shipped_distill_recipes_are_valid(name):
    load_config(REPO / "recipes" / "configs" / name)


def test_shipped_distill_recipe_loads_with_overrides():
    config = load_config(REPO / "recipes" / "configs" / "distill_tiny.yaml", ["stage2.train=lora", "stage2.steps=7"])
    assert config.stage2.train == "lora" and config.stage2.steps == 7 and config.total_steps == 7 + config.stage1.steps
    assert config.student.keep_attention == 0.25 and config.data.source == "text"


@pytest.mark.parametrize("change, message", [
    ({"stage2": {"train": "everything"}}, r"stage2.train='everything' is not allowed; choose from \['mixers', 'all'"),
    ({"stage1": {"stepz": 3}}, r"unknown key\(s\) \['stage1.stepz'\]"),
    ({"student": {"mixer": "lstm"}}, r"student.mixer='lstm' is not a registered linear mixer; allowed: \["),
    ({"stage1": {"lr": 0}}, r"stage1.lr=0.0 is not allowed: a finite number in \(0, inf\)"),
    ({"stage2": {"temperature": -1}}, r"stage2.temperature=-1.0 is not allowed"),
    ({"student": {"keep_attention": "some"}}, r"student.keep_attention='some' is not allowed: a list .* or 'auto'"),
    ({"student": {"keep_attention": "auto"}}, r"keep_attention='auto' needs selection.keep"),
    ({"selection": {"keep": 1}}, r"selection.keep=1 is read only with student.keep_attention='auto'"),
    ({"stage2": {"lora": {"enabled": True}}}, r"stage2.lora.enabled=True: leave it out"),
    ({"data": {"source": "mqar", "mqar": {"num_examples": 4}}}, r"data.source='mqar' is not allowed; choose from"),
    ({"data": {"streaming": True}}, r"data.streaming=True needs eval.files"),
    ({"stage1": {"steps": 0}, "stage2": {"steps": 0}}, r"nothing to train"),
    ({"stage2": {"seq_len": 64}}, r"stage2.seq_len=64 \(not data.seq_len=32\) needs eval.files"),
])
def test_bad_recipes_fail_naming_key_and_allowed_values(tmp_path, change, message):
    recipe = distill_recipe(tmp_path, tmp_path / "teacher", **change)
    with pytest.raises(ValueError, match=message):
        config_from_dict(recipe)


def test_unknown_teacher_architecture_fails_before_any_work(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    config = config_from_dict(distill_recipe(tmp_path, tmp_path / "gpt2"))
    with pytest.raises(ValueError, match=r"teacher=.*gpt2.*model_type='gpt2' is not supported; supported: \["):
        distill(config)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("keep, message", [
    ([1, 4], r"student.keep_attention: keep_attention holds 4: layer indices are integers in \[0, 4\)"),
    (1.5, r"student.keep_attention: keep_attention=1.5: a fraction must be in \[0, 1\]"),
])
def test_kept_layer_out_of_range_fails_before_any_work(tmp_path, teacher, keep, message):
    config = config_from_dict(distill_recipe(tmp_path, teacher, student={"keep_attention": keep}))
    with pytest.raises(ValueError, match=message):
        distill(config)
    assert not (tmp_path / "run").exists()


def test_teacher_checks_read_only_its_config(tmp_path, teacher):
    plan = check_teacher(config_from_dict(distill_recipe(tmp_path, teacher, student={"keep_attention": 0.5})))
    assert (plan.num_layers, plan.kept, plan.num_keep) == (4, [1, 3], None)
    auto = config_from_dict(distill_recipe(tmp_path, teacher, student={"keep_attention": "auto"},
                                           selection={"keep": 0.25}))
    assert check_teacher(auto).num_keep == 1
    with pytest.raises(ValueError, match=r"selection.keep=5 is not allowed: a count in \[0, 4\]"):
        check_teacher(config_from_dict(distill_recipe(tmp_path, teacher, student={"keep_attention": "auto"},
                                                      selection={"keep": 5})))
    with pytest.raises(ValueError, match=r"mixer_config keys \['num_layers'\] are not linear-mixer fields"):
        check_teacher(config_from_dict(distill_recipe(tmp_path, teacher, student={"mixer_config": {"num_layers": 2}})))
    with pytest.raises(ValueError, match=r"no causal-LM directory"):
        check_teacher(config_from_dict(distill_recipe(tmp_path, tmp_path / "missing")))


def test_distill_cli_reports_a_bad_override(tmp_path):
    path = tmp_path / "recipe.json"  # JSON is YAML
    path.write_text(json.dumps(distill_recipe(tmp_path, tmp_path / "teacher")))
    result = subprocess.run([sys.executable, str(REPO / "recipes" / "distill.py"), "stage2.stepz=3", "--config",
                             str(path)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0 and "unknown key(s) ['stage2.stepz']" in result.stderr
