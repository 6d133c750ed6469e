"""The distillation run end to end on a tiny Llama teacher: each stage lowers its loss, the saved student is a
memlm checkpoint with the teacher's tokenizer, frozen weights stay the teacher's, LoRA merges, and a run stopped in
either stage resumes to the weights of an uninterrupted one."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import memlm
from memlm.distill.config import config_from_dict
from memlm.distill.run import copy_recall_rows, distill
from tests.distill.recipe_helpers import distill_recipe, save_teacher
from tests.distill.teachers import tiny_teacher


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "llama")


def log(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def test_distillation_trains_both_stages_and_saves_a_memlm_student(tmp_path, teacher):
    result = distill(config_from_dict(distill_recipe(tmp_path, teacher, logging={"trackers": ["tensorboard"]})))
    out = tmp_path / "run"
    records = log(out)
    assert [(r["step"], r["stage"]) for r in records] == [(i, 1) for i in range(1, 5)] + [(i, 2) for i in range(5, 9)]
    stage2 = [r["loss"] for r in records if r["stage"] == 2]
    assert stage2[-1] < stage2[0]  # the KL to the teacher falls
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary and summary["steps"] == 8
    assert summary["kept_attention"] == [3] and summary["replaced"] == [0, 1, 2]
    for layer, mse in summary["stage1"]["alignment_mse"].items():  # stage 1 lowers every layer's held-out MSE
        assert mse["after"] < mse["before"], layer
    heldout = summary["heldout"]
    assert set(heldout) == {"teacher", "student_init", "student"}
    assert summary["loss_ratio"] == pytest.approx(heldout["student"]["loss"] / heldout["teacher"]["loss"])
    assert any(out.glob("**/events.out.tfevents*"))

    student = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(student, memlm.MemLMForCausalLM)
    assert student.config.mixer_types == ["gated_deltanet"] * 3 + ["full_attention"]
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(teacher).get_vocab()
    ids = torch.tensor([[5, 60, 70, 80, 90, 100]])
    torch.testing.assert_close(student(ids).logits, result.student(ids).logits)
    # train: mixers: everything but the replaced layers' mixers is still the teacher's
    llama = AutoModelForCausalLM.from_pretrained(teacher)
    assert torch.equal(student.model.layers[3].mixer.q_proj.weight, llama.model.layers[3].self_attn.q_proj.weight)
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, llama.model.layers[0].mlp.up_proj.weight)
    assert student(ids).logits.shape == llama(ids).logits.shape


@pytest.mark.parametrize("stop_at", [2, 6])  # in stage 1, in stage 2
def test_a_run_stopped_in_either_stage_resumes_to_the_uninterrupted_weights(tmp_path, teacher, stop_at):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = distill(config_from_dict(distill_recipe(tmp_path / "a", teacher, checkpoint={"every": 3})))
    interrupted = distill_recipe(tmp_path / "b", teacher, checkpoint={"every": 3})
    first = distill(config_from_dict(interrupted), stop_at=stop_at)
    assert first.summary["stopped_at"] == stop_at
    resumed = distill(config_from_dict({**interrupted, "checkpoint": {"every": 3, "resume_from": "latest"}}))
    assert resumed.summary["steps"] == 8
    expected, got = log(tmp_path / "a" / "run"), log(tmp_path / "b" / "run")
    assert [r["step"] for r in got] == list(range(1, 9))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(expected, got, strict=True)) <= 1e-6
    for name, param in full.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], param, atol=1e-6, rtol=0)
    for name, scores in full.summary["heldout"].items():
        assert resumed.summary["heldout"][name]["loss"] == pytest.approx(scores["loss"], abs=1e-6), name


def test_auto_selection_keeps_the_layer_of_least_kl_and_a_resumed_run_reads_it_back(tmp_path, teacher):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sections = {"student": {"keep_attention": "auto"}, "selection": {"keep": 1, "batches": 2},
                "checkpoint": {"every": 3}}
    full = distill(config_from_dict(distill_recipe(tmp_path / "a", teacher, **sections)))
    selection = full.summary["selection"]
    assert selection["layers"] == [min(range(4), key=lambda layer: selection["kl"][str(layer)])]
    assert full.summary["kept_attention"] == selection["layers"]
    assert sorted(full.summary["stage1"]["alignment_mse"]) == ["0", "1", "2", "3"]  # stage 1: all replaced
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "run")
    assert [i for i, m in enumerate(saved.config.mixer_types) if m == "full_attention"] == selection["layers"]
    interrupted = distill_recipe(tmp_path / "b", teacher, **sections)
    distill(config_from_dict(interrupted), stop_at=6)
    resumed = distill(config_from_dict({**interrupted, "checkpoint": {"every": 3, "resume_from": "latest"}}))
    assert resumed.summary["selection"] == selection
    for name, param in full.student.state_dict().items():
        torch.testing.assert_close(resumed.student.state_dict()[name], param, atol=1e-6, rtol=0)


def test_stage2_with_lora_merges_adapters_into_the_frozen_layers(tmp_path, teacher):
    recipe = distill_recipe(tmp_path, teacher, stage2={"train": "lora", "lr": 1e-2, "lora": {"r": 2}})
    distill(config_from_dict(recipe))
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    llama = AutoModelForCausalLM.from_pretrained(teacher)
    assert type(student) is memlm.MemLMForCausalLM  # merged: no adapter left
    assert not torch.equal(student.model.layers[0].mlp.up_proj.weight, llama.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(student.model.layers[3].mixer.q_proj.weight, llama.model.layers[3].self_attn.q_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, llama.model.embed_tokens.weight)


def test_stage2_train_all_trains_every_weight_and_stage1_still_only_the_mixers(tmp_path, teacher):
    recipe = distill_recipe(tmp_path, teacher, stage2={"train": "all", "steps": 2}, checkpoint={"every": 4})
    distill(config_from_dict(recipe), stop_at=4)  # the end of stage 1, with its checkpoint
    stage1 = load_file(str(tmp_path / "run" / "checkpoints" / "step_4" / "model.safetensors"))
    llama = AutoModelForCausalLM.from_pretrained(teacher)
    assert torch.equal(stage1["student.model.embed_tokens.weight"], llama.model.embed_tokens.weight)
    assert torch.equal(stage1["student.model.layers.0.mlp.up_proj.weight"], llama.model.layers[0].mlp.up_proj.weight)
    resumed = distill(config_from_dict({**recipe, "checkpoint": {"every": 4, "resume_from": "latest"}}))
    assert resumed.summary["stage2"]["train"] == "all"
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert not torch.equal(student.model.embed_tokens.weight, llama.model.embed_tokens.weight)
    assert not torch.equal(student.model.layers[3].mixer.q_proj.weight, llama.model.layers[3].self_attn.q_proj.weight)


def test_a_reused_output_dir_of_another_recipe_is_refused(tmp_path, teacher):
    distill(config_from_dict(distill_recipe(tmp_path, teacher, stage1={"steps": 1}, stage2={"steps": 1})))
    other = distill_recipe(tmp_path, teacher, stage1={"steps": 1}, stage2={"steps": 1, "lr": 5e-4})
    with pytest.raises(ValueError, match=r"holds a run of another recipe \(it differs in \['stage2.lr'\]\)"):
        distill(config_from_dict(other))
    assert distill(config_from_dict(other), overwrite=True).summary["steps"] == 2


def test_copy_recall_rows_repeat_each_full_rows_first_half():
    from datasets import Dataset

    rows = Dataset.from_list([{"input_ids": list(range(10, 18)), "loss_mask": [1] * 8},
                              {"input_ids": list(range(8)), "loss_mask": [1] * 6 + [0] * 2}])  # padded: left out
    input_ids, labels = copy_recall_rows(rows)
    assert input_ids.tolist() == [[10, 11, 12, 13, 10, 11, 12, 13]]
    assert labels.tolist() == [[-100] * 5 + [11, 12, 13]]


@pytest.mark.slow
def test_two_process_data_parallel_distillation_equals_one_process(tmp_path, teacher):
    """recipes/distill.py under torchrun on 2 CPU processes (gloo) with 1 row each = one process with 2 rows."""
    import os
    import subprocess
    import sys

    import yaml

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    students = {}
    for name, processes, rows in (("ddp", 2, 1), ("single", 1, 2)):
        (tmp_path / name).mkdir()
        recipe = distill_recipe(tmp_path / name, teacher, stage1={"batch_size": rows}, stage2={"batch_size": rows})
        path = tmp_path / name / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"] \
            if processes == 2 else []
        done = subprocess.run([sys.executable, *launcher, str(repo / "recipes" / "distill.py"), "--config", str(path)],
                              capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        students[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name / "run").state_dict()
        assert json.loads((tmp_path / name / "run" / "summary.json").read_text())["num_processes"] == processes
    for name, param in students["single"].items():
        torch.testing.assert_close(students["ddp"][name], param, atol=1e-5, rtol=1e-4)


def test_distributions_deepspeed_and_fsdp_without_mixer_units_are_refused_by_name_and_fsdp2_wraps_mixers():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from memlm.distill.run import check_distribution, fsdp_unit_classes

    def accelerator(kind, **plugin):
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(
            fsdp_plugin=FullyShardedDataParallelPlugin(**plugin) if plugin else None))

    with pytest.raises(ValueError, match="DeepSpeed is not supported.*pickle"):
        check_distribution(accelerator(DistributedType.DEEPSPEED))
    with pytest.raises(ValueError, match="fsdp_version=1 .*allowed: 2"):
        check_distribution(accelerator(DistributedType.FSDP, fsdp_version=1, auto_wrap_policy="transformer_based_wrap"))
    for policy, shown in (("size_based_wrap", "size_based_auto_wrap_policy"), ("no_wrap", "NO_WRAP")):
        with pytest.raises(ValueError, match=f"fsdp_auto_wrap_policy='{shown}'.*allowed: TRANSFORMER_BASED_WRAP"):
            check_distribution(accelerator(DistributedType.FSDP, fsdp_version=2, auto_wrap_policy=policy))
    for allowed in (accelerator(DistributedType.NO), accelerator(DistributedType.MULTI_GPU),
                    accelerator(DistributedType.FSDP, fsdp_version=2, auto_wrap_policy="transformer_based_wrap")):
        check_distribution(allowed)
    student = memlm.distill.hybrid_from_teacher(tiny_teacher("llama"), [1], "gla")
    assert fsdp_unit_classes(student, [0, 2, 3]) == ["MemLMDecoderLayer", "GatedLinearAttention"]
    assert fsdp_unit_classes(student, [], ["MemLMDecoderLayer"]) == ["MemLMDecoderLayer"]
    assert fsdp_unit_classes(student, [0], ["GatedLinearAttention", "X"]) == ["GatedLinearAttention", "X"]


@pytest.mark.slow
def test_fsdp2_distillation_on_two_cpu_processes_matches_one_process_and_resumes_exactly(tmp_path):
    """Both stages with the student sharded by torch's FSDP2 (each replaced mixer its own unit) on 2 CPU
    processes (gloo), stopped in stage 2 with memlm's checkpoint and resumed, give one process's losses and
    weights (tests/distill/fsdp_worker.py)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    worker = str(repo / "tests" / "distill" / "fsdp_worker.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    runs = (torchrun + [worker, str(tmp_path / "fsdp"), "3"], torchrun + [worker, str(tmp_path / "fsdp"), "resume"],
            [sys.executable, worker, str(tmp_path / "single"), "all"])
    for command in runs:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "fsdp" / "checkpoints" / "step_3" / "manifest.json").read_text())
    assert manifest["num_processes"] == 2
    sharded, single = (json.loads((tmp_path / name / "losses.json").read_text()) for name in ("fsdp", "single"))
    assert len(sharded) == 4
    assert max(abs(a - b) for a, b in zip(sharded, single, strict=True)) <= 1e-5
    trained, expected = (load_file(tmp_path / name / "model.safetensors") for name in ("fsdp", "single"))
    teacher = tiny_teacher("llama")
    torch.manual_seed(0)  # as the worker
    initial = memlm.distill.hybrid_from_teacher(teacher, [1], "gated_deltanet").state_dict()
    name = "model.layers.0.mixer.in_proj_qkv.weight"
    assert (trained[name] - initial[name]).abs().max() > 1e-4  # the mixers trained
    for name, param in expected.items():
        torch.testing.assert_close(trained[name], param, atol=1e-5, rtol=1e-4)
