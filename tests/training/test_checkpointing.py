"""memlm's training checkpoints: no pickle is ever loaded, writes are atomic, runs never share an output_dir."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_trainer import REPO, losses, text_recipe
from transformers import AutoModelForCausalLM

from memlm.training import train
from memlm.training.checkpointing import CheckpointError
from memlm.training.config import config_from_dict


def steps(output_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def saved_steps(output_dir: Path) -> list[str]:
    return sorted(p.name for p in (output_dir / "checkpoints").iterdir())


class Planted:
    """Unpickling this creates ``marker``: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_resume_never_loads_a_planted_pickle(tmp_path):
    recipe = text_recipe(tmp_path, checkpoint={"every": 2})
    train(config_from_dict(recipe), stop_at=2)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_2"
    written = sorted(p.name for p in checkpoint.iterdir())
    assert all(name.endswith((".safetensors", ".json")) for name in written), written
    for name in written:  # each file is what its name says: no pickle inside
        load_file(checkpoint / name) if name.endswith(".safetensors") else json.loads((checkpoint / name).read_text())
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Planted(marker))
    # the names accelerate's load_state reads (custom_checkpoint_* with weights_only=False)
    for name in ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin",
                 "scheduler.bin", "sampler.bin", "pytorch_model.bin", "model.bin"]:
        (checkpoint / name).write_bytes(payload)
    (tmp_path / "run" / "checkpoints" / "step_1").mkdir()  # an old-style checkpoint made of pickles only
    (tmp_path / "run" / "checkpoints" / "step_1" / "custom_checkpoint_0.pkl").write_bytes(payload)
    resumed = train(config_from_dict({**recipe, "checkpoint": {"every": 2, "resume_from": "latest"}}))
    assert resumed.summary["steps"] == 6
    assert not marker.exists(), "a planted pickle was executed on resume"


def test_a_run_killed_while_saving_resumes_from_the_last_intact_checkpoint(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = train(config_from_dict(text_recipe(tmp_path / "a", checkpoint={"every": 2})))
    recipe = text_recipe(tmp_path / "b", checkpoint={"every": 2})
    path = tmp_path / "b" / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, str(REPO / "tests" / "training" / "kill_worker.py"), str(path), "4"],
                            capture_output=True, text=True, timeout=600, env=env)
    assert killed.returncode == -9, killed.stderr[-3000:]
    run = tmp_path / "b" / "run"
    assert saved_steps(run) == ["step_2", "step_4.partial"]  # step_4 was never completed
    assert steps(run) == [1, 2, 3, 4]
    resume = {**recipe, "checkpoint": {"every": 2, "resume_from": "latest"}}
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint .*step_4\.partial"):
        resumed = train(config_from_dict(resume))
    assert steps(run) == [1, 2, 3, 4, 5, 6]  # the log lines after step 2 were replayed, not repeated
    assert max(abs(a - b) for a, b in zip(losses(tmp_path / "a" / "run"), losses(run), strict=True)) <= 1e-5
    for name, param in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], param, atol=1e-5, rtol=0)
    assert saved_steps(run) == ["step_4", "step_6"]

    damaged = run / "checkpoints" / "step_6" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step_6: .*optimizer\.safetensors is damaged"):
        again = train(config_from_dict(resume))
    assert again.summary["steps"] == 6 and steps(run) == [1, 2, 3, 4, 5, 6]  # from step_4
    (run / "checkpoints" / "step_6" / "optimizer.safetensors").write_bytes(b"not safetensors")
    explicit = {**recipe, "checkpoint": {"resume_from": str(run / "checkpoints" / "step_6")}}
    with pytest.raises(CheckpointError, match=r"checkpoint .*step_6: file .*step_6/optimizer\.safetensors is damaged"):
        train(config_from_dict(explicit))


def test_log_has_each_step_once_after_resuming_from_an_earlier_checkpoint(tmp_path):
    recipe = text_recipe(tmp_path, checkpoint={"every": 2, "keep": 3})
    train(config_from_dict(recipe), stop_at=3)
    assert steps(tmp_path / "run") == [1, 2, 3]
    step_2 = str(tmp_path / "run" / "checkpoints" / "step_2")
    train(config_from_dict({**recipe, "checkpoint": {"every": 2, "keep": 3, "resume_from": step_2}}))
    assert steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_a_reused_output_dir_never_loses_or_mixes_runs(tmp_path):
    first = text_recipe(tmp_path, checkpoint={"every": 2, "keep": 3})
    train(config_from_dict(first))
    run = tmp_path / "run"
    assert saved_steps(run) == ["step_2", "step_4", "step_6"]
    other = text_recipe(tmp_path, optimizer={"lr": 3e-3}, train={"max_steps": 2}, checkpoint={"every": 1, "keep": 2})
    with pytest.raises(ValueError, match=r"holds a run of another recipe \(it differs in \[.*'optimizer.lr'"):
        train(config_from_dict(other))
    with pytest.raises(ValueError, match=r"holds a run of another recipe \(it differs in \['optimizer.lr'\]\)"):
        train(config_from_dict({**other, "checkpoint": {"resume_from": "latest"}}))
    with pytest.raises(ValueError, match="cannot resume"):
        train(config_from_dict({**other, "checkpoint": {"resume_from": "latest"}}), overwrite=True)
    assert saved_steps(run) == ["step_2", "step_4", "step_6"] and steps(run) == [1, 2, 3, 4, 5, 6]

    # a resumed run prunes only its own steps: resumed from step_2 up to 4, it leaves the later step_6
    resume = {**first, "train": {**first["train"], "max_steps": 4},
              "checkpoint": {"every": 2, "keep": 1, "resume_from": str(run / "checkpoints" / "step_2")}}
    train(config_from_dict(resume))
    assert saved_steps(run) == ["step_4", "step_6"]

    replaced = train(config_from_dict(other), overwrite=True)
    assert replaced.summary["steps"] == 2
    assert saved_steps(run) == ["step_1", "step_2"] and steps(run) == [1, 2]
    assert json.loads((run / "recipe.json").read_text())["optimizer"]["lr"] == 3e-3

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="is not empty and holds no memlm run"):
        train(config_from_dict({**first, "output_dir": str(stranger)}))
    assert (stranger / "notes.txt").read_text() == "not a run"


def test_a_resumed_run_may_train_longer(tmp_path):
    recipe = text_recipe(tmp_path, checkpoint={"every": 2}, train={"max_steps": 4})
    train(config_from_dict(recipe))
    longer = {**recipe, "train": {**recipe["train"], "max_steps": 6}, "checkpoint": {"resume_from": "latest"}}
    assert train(config_from_dict(longer)).summary["steps"] == 6
    assert steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes_exactly(tmp_path):
    """memlm's checkpoints of a model sharded with torch's FSDP2 on 2 CPU processes (gloo): stopped at
    step 2 and resumed, it trains as one unsharded process does, and its final model loads."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    worker = str(REPO / "tests" / "training" / "fsdp_worker.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    for stop in ("2", "resume"):
        sharded = subprocess.run(torchrun + [worker, str(tmp_path / "fsdp"), stop], capture_output=True, text=True,
                                 timeout=600, env=env)
        assert sharded.returncode == 0, sharded.stderr[-3000:]
    manifest = json.loads((tmp_path / "fsdp" / "checkpoints" / "step_2" / "manifest.json").read_text())
    assert manifest["num_processes"] == 2 and {"rng_0.json", "rng_1.json"} <= set(manifest["files"])
    alone = subprocess.run([sys.executable, worker, str(tmp_path / "single"), "all"], capture_output=True, text=True,
                           timeout=600, env=env)
    assert alone.returncode == 0, alone.stderr[-3000:]
    sharded_losses, single_losses = (json.loads((tmp_path / name / "losses.json").read_text())
                                     for name in ("fsdp", "single"))
    assert len(sharded_losses) == 4
    assert max(abs(a - b) for a, b in zip(sharded_losses, single_losses, strict=True)) <= 1e-5
    trained, expected = (AutoModelForCausalLM.from_pretrained(tmp_path / name, use_safetensors=True).state_dict()
                         for name in ("fsdp", "single"))
    for name, param in expected.items():
        torch.testing.assert_close(trained[name], param, atol=1e-5, rtol=1e-4)
