"""The distillation run of ``recipes/distill.py``: a pretrained Transformer into a memlm hybrid, on Accelerate.

    teacher (Llama/Mistral/Qwen2/Qwen3)
      -> student = hybrid_from_teacher(teacher, keep_attention, mixer)          (all layers replaced for ``auto``)
      -> stage 1: each replaced mixer fitted to its attention's output on the teacher's hidden states (MSE),
                  everything else frozen                                         (memlm.distill.alignment)
      -> ``auto``: the layers whose restored attention lowers the KL most keep it (memlm.distill.selection)
      -> stage 2: KL(teacher || student) on next-token distributions (+ CE), new mixers trained, the rest
                  frozen, trained, or LoRA-adapted                               (memlm.distill.losses)
      -> output_dir: the student as a memlm checkpoint with the teacher's tokenizer, summary.json

The run reuses the training recipes' machinery (:mod:`memlm.training.trainer`): the data sources and packing,
the output-dir protection, checkpoints (safetensors + JSON) with exact resume, the step loop with gradient
accumulation, clipping, trackers, log and progress bar. Optimizer steps are counted across the stages
(stage 2's first step is ``stage1.steps + 1``), so ``stop_at`` and ``checkpoint.every`` count them too; a
checkpoint holds the stage's objective (the student), optimizer and scheduler, and a resumed run continues in
the stage its step belongs to. Each stage's objective is a module around the student (the teacher is held
outside it: never trained, saved or wrapped), so DDP averages its gradients like a training run's.

Under FSDP2 each replaced layer's mixer is an FSDP unit of its own inside its layer's (stage 1 calls the mixers
outside the student's forward; a mixer unit gathers its own parameters when called), and each stage trains a
copy of the student that Accelerate shards in place: the run keeps the student whole on every process for the
evaluations, the layer selection and the saving, and gathers the trained weights back into it after each stage.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed
from datasets import Dataset
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from torch.nn import functional as F
from tqdm.auto import tqdm

from memlm.distill.alignment import alignment_loss, attention_io, mixer_parameters
from memlm.distill.config import DistillConfig, check_teacher
from memlm.distill.losses import distillation_loss
from memlm.distill.selection import select_attention_layers
from memlm.distill.student import hybrid_from_teacher, restore_attention
from memlm.files import atomic_write_text
from memlm.training.builders import lora_model, packed_text, pretrained_tokenizer
from memlm.training.checkpointing import CheckpointError, load_checkpoint
from memlm.training.config import ScheduleSection
from memlm.training.trainer import (
    RunLog,
    available_trackers,
    check_loader,
    check_output_dir,
    lr_factor,
    make_accelerator,
    make_loader,
    micro_batches,
    optimize,
    refuse_deepspeed,
    resolve_resume,
    save_model,
    save_run_checkpoint,
    start_run,
)

# What a resumed run may change: its checkpoints, logging, evaluation and how long stage 2 runs.
RESUMABLE_CHANGES = ("output_dir", "stage2.steps", "train.log_every", "checkpoint.", "logging.", "eval.")
SELECTION_FILE = "selection.json"
STAGE1_FILE = "stage1.json"  # stage 1's per-layer alignment MSE on the held-out rows, before and after


class AlignmentObjective(nn.Module):
    """Stage 1: ``sum_l MSE(mixer_l(x_l), attention_l(x_l))`` over the replaced layers ``l``, where ``x_l``
    ``[B, T, hidden]`` is the input of the teacher's attention of layer ``l`` (after its input norm) on the
    batch and ``attention_l(x_l)`` its output. The inputs are the teacher's, so each mixer's gradient is its
    own term's: the sum trains every mixer alone, in one pass of the teacher."""

    def __init__(self, student: nn.Module, teacher: nn.Module, layers: list[int]):
        super().__init__()
        self.student, self.layers, self._teacher = student, list(layers), (teacher,)  # teacher: no submodule

    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        return sum(self.per_layer(input_ids, loss_mask).values())

    def per_layer(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{layer: its MSE}`` on the batch ``input_ids`` ``[B, T]`` (``loss_mask`` ``[B, T]``: 0 = padding)."""
        with torch.no_grad():
            io = attention_io(self._teacher[0], input_ids, layers=self.layers)
        return {layer: alignment_loss(self.student, layer, *io[layer], attention_mask=loss_mask)
                for layer in self.layers}


class DistillationObjective(nn.Module):
    """Stage 2: ``tau^2 KL(softmax(teacher / tau) || softmax(student / tau)) + ce_weight * CE`` per token
    (:func:`memlm.distill.losses.distillation_loss`), the teacher's logits computed without gradients."""

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float, ce_weight: float):
        super().__init__()
        self.student, self._teacher = student, (teacher,)
        self.temperature, self.ce_weight = temperature, ce_weight

    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self._teacher[0](input_ids=input_ids, use_cache=False).logits
        student_logits = self.student(input_ids=input_ids, use_cache=False).logits
        return distillation_loss(student_logits, teacher_logits, attention_mask=loss_mask, labels=input_ids,
                                 temperature=self.temperature, ce_weight=self.ce_weight)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Packed rows -> ``input_ids`` ``[B, T]`` and ``loss_mask`` ``[B, T]`` (0 on padding). Teacher and student
    read each row as one sequence (documents separated by EOS, as in pretraining), so they see the same
    context at every position."""
    return {"input_ids": torch.tensor([row["input_ids"] for row in rows]),
            "loss_mask": torch.tensor([row["loss_mask"] for row in rows])}


def training_and_heldout_rows(config: DistillConfig, tokenizer) -> tuple[Dataset, Dataset]:
    """``(training rows, held-out rows)`` of ``data`` and ``eval`` (see
    :class:`~memlm.distill.config.DistillEvalSection`)."""
    rows, count = packed_text(config.data, tokenizer), config.eval.heldout_rows
    if config.eval.files:
        heldout = packed_text(dataclasses.replace(config.data, source=config.eval.source, files=config.eval.files,
                                                  name=None, streaming=False, max_documents=None), tokenizer)
        return rows, heldout.select(range(min(count, len(heldout))))
    if len(rows) <= count:
        raise ValueError(f"eval.heldout_rows={count} leaves no training row: the data packs into {len(rows)} rows "
                         "of data.seq_len; give more data or fewer held-out rows")
    return rows.select(range(len(rows) - count)), rows.select(range(len(rows) - count, len(rows)))


@torch.no_grad()
def heldout_loss(model: nn.Module, rows: Dataset, batch_size: int) -> float:
    """Mean next-token cross entropy (nats per token) of ``model`` on the rows, every scored token weighing the
    same (a target is scored where ``loss_mask`` is 1)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collate(rows.select(range(start, min(start + batch_size, len(rows)))))
        ids, mask = batch["input_ids"].to(device), batch["loss_mask"].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        total += float(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    return total / count


def copy_recall_rows(rows: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Recall at the training length: each unpadded held-out row's first half ``h`` (``T // 2`` tokens)
    repeated, ``[h; h]`` ``[N, 2 (T // 2)]``, labelled on the second copy but its first token (which nothing
    announces): predicting it is recalling the text read ``T // 2`` tokens before."""
    full = [row["input_ids"] for row in rows if all(row["loss_mask"])]
    if not full:
        raise ValueError("no held-out row without padding for the copy-recall rows: raise eval.heldout_rows")
    half = torch.tensor(full)[:, : len(full[0]) // 2]
    input_ids = torch.cat([half, half], dim=1)
    labels = input_ids.clone()
    labels[:, : half.shape[1] + 1] = -100
    return input_ids, labels


def copy_recall(model: nn.Module, rows: Dataset, batch_size: int) -> float:
    """Token accuracy on :func:`copy_recall_rows` (:func:`memlm.eval.mqar_accuracy`'s count)."""
    from memlm.eval import mqar_accuracy

    return mqar_accuracy(model, *copy_recall_rows(rows), batch_size=batch_size)


@torch.no_grad()
def alignment_mse(student: nn.Module, teacher: nn.Module, layers: list[int], rows: Dataset,
                  batch_size: int) -> dict[int, float]:
    """``{layer: mean stage-1 MSE}`` of the student's mixers on the rows (batches weighed by their rows)."""
    objective = AlignmentObjective(student, teacher, layers)
    sums = dict.fromkeys(layers, 0.0)
    device = next(student.parameters()).device
    for start in range(0, len(rows), batch_size):
        batch = collate(rows.select(range(start, min(start + batch_size, len(rows)))))
        per_layer = objective.per_layer(batch["input_ids"].to(device), batch["loss_mask"].to(device))
        for layer, value in per_layer.items():
            sums[layer] += float(value) * len(batch["input_ids"])
    return {layer: value / len(rows) for layer, value in sums.items()}


def measure(models: dict[str, nn.Module], rows: Dataset, batch_size: int) -> dict[str, dict[str, float]]:
    """Held-out loss and copy recall of each model: ``{name: {"loss", "copy_recall"}}``."""
    return {name: {"loss": heldout_loss(model, rows, batch_size), "copy_recall": copy_recall(model, rows, batch_size)}
            for name, model in tqdm(models.items(), desc="evaluate", leave=False)}


@dataclass
class DistillResult:
    """``summary``: what ``output_dir/summary.json`` holds; ``student``: the distilled model (unwrapped, LoRA
    merged when ``stage2.lora.merge``), or the student where ``stop_at`` ended the run."""

    summary: dict
    student: nn.Module


def check_distribution(accelerator) -> None:
    """Refuse, before any work, the distributions the distillation run does not support: DeepSpeed
    (:func:`~memlm.training.trainer.refuse_deepspeed`), and FSDP but FSDP2 with transformer-based wrapping, the
    one that can make each replaced mixer its own unit (:func:`fsdp_unit_classes`)."""
    refuse_deepspeed(accelerator.distributed_type)
    if accelerator.distributed_type != DistributedType.FSDP:
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.fsdp_version != 2:
        raise ValueError(f"fsdp_config.fsdp_version={plugin.fsdp_version} is not supported by distillation; allowed: "
                         "2 (FSDP2, recipes/accelerate/fsdp.yaml)")
    if plugin.auto_wrap_policy is not transformer_auto_wrap_policy:
        policy = getattr(plugin.auto_wrap_policy, "__name__", "NO_WRAP")
        raise ValueError(f"fsdp_config.fsdp_auto_wrap_policy={policy!r} is not supported by "
                         "distillation; allowed: TRANSFORMER_BASED_WRAP (each replaced mixer is made its own unit)")


def fsdp_unit_classes(student: nn.Module, layers: list[int], names: list[str] | None = None) -> list[str]:
    """The class names FSDP2 shards as units of their own (``fsdp_transformer_layer_cls_to_wrap``): ``names``
    (None: the student's decoder-layer classes) plus the mixer classes of ``layers``. Stage 1 calls those
    mixers outside the student's forward, where their layers' units would not gather them."""
    names = list(dict.fromkeys(type(layer).__name__ for layer in student.model.layers) if names is None else names)
    mixers = [type(student.model.layers[i].mixer).__name__ for i in layers]
    return names + [name for name in dict.fromkeys(mixers) if name not in names]


def stage_copy(model: nn.Module, sharded: bool) -> nn.Module:
    """What a stage trains: ``model``, or under FSDP (``sharded``) a copy of it, which Accelerate shards in
    place; ``model`` stays whole on every process and takes the trained weights back (:func:`keep_trained`)."""
    return copy.deepcopy(model) if sharded else model


def keep_trained(model: nn.Module, trained: nn.Module, sharded: bool) -> None:
    """Under FSDP (``sharded``), gather the weights of ``trained``, the sharded copy of ``model`` a stage
    trained, on every process, into ``model``; otherwise ``trained`` is ``model`` already."""
    if sharded:
        model.load_state_dict(get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True)))


def load_teacher(name: str, device: torch.device) -> nn.Module:
    """The teacher (safetensors only, its checkpoint's dtype) on ``device``, frozen, in eval mode."""
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, dtype="auto")
    return teacher.to(device).eval().requires_grad_(False)


def distill(config: DistillConfig, stop_at: int | None = None, overwrite: bool = False) -> DistillResult:
    """Distill ``config.teacher`` into a hybrid as ``config`` says (see the module docstring).

    ``stop_at``: end after this optimizer step (counted across both stages) with a checkpoint, as a preempted
    job would; resume with ``checkpoint.resume_from: latest``. ``overwrite``: start a new run in an
    ``output_dir`` that holds another one (see :func:`memlm.training.trainer.check_output_dir`).
    """
    plan = check_teacher(config)
    output_dir = Path(config.output_dir)
    check_output_dir(config, overwrite, RESUMABLE_CHANGES)
    trackers = available_trackers(config.logging.trackers)
    accelerator = make_accelerator(config.train.gradient_accumulation_steps, config.train.precision, trackers,
                                   output_dir)
    check_distribution(accelerator)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    set_seed(config.train.seed)
    resume_dir, manifest = resolve_resume(config, RESUMABLE_CHANGES)
    step = int(manifest["step"]) if manifest else 0

    tokenizer = pretrained_tokenizer(config.teacher)
    train_rows, heldout = training_and_heldout_rows(config, tokenizer)
    rows = {stage: train_rows if getattr(config, stage).seq_len in (None, config.data.seq_len) else
            packed_text(dataclasses.replace(config.data, seq_len=getattr(config, stage).seq_len), tokenizer)
            for stage in ("stage1", "stage2")}
    teacher = load_teacher(config.teacher, accelerator.device)
    student = hybrid_from_teacher(teacher, [] if plan.kept is None else plan.kept, config.student.mixer,
                                  config.student.mixer_config)
    replaced = list(student.distill_init_report.replaced)
    if sharded:  # read by Accelerate's wrapping in each stage's prepare
        plugin = accelerator.state.fsdp_plugin
        plugin.transformer_cls_names_to_wrap = fsdp_unit_classes(student, replaced,
                                                                 plugin.transformer_cls_names_to_wrap)
    start_run(accelerator, config, resume_dir is not None, step, trackers)
    log = RunLog(accelerator, output_dir, trackers)
    main = accelerator.is_main_process
    batch_size = config.eval.batch_size
    summary = {"teacher": config.teacher, "mixer": config.student.mixer,
               "distributed_type": accelerator.distributed_type.value, "num_processes": accelerator.num_processes}
    before = measure({"teacher": teacher, "student_init": student}, heldout, batch_size) if main else {}
    in_stage1 = main and step <= config.stage1.steps
    mse_before = alignment_mse(student, teacher, replaced, heldout, batch_size) if in_stage1 else {}

    stage1_end = config.stage1.steps
    last = min(config.total_steps, stop_at or config.total_steps)
    stage1 = None
    if config.stage1.steps and step <= stage1_end:
        objective = AlignmentObjective(stage_copy(student, sharded), teacher, replaced)
        stage1 = run_stage(accelerator, config, objective, mixer_parameters(objective.student, replaced),
                           rows["stage1"], "stage1", (resume_dir, manifest), step, 0, min(last, stage1_end), log)
        keep_trained(student, accelerator.unwrap_model(stage1.objective).student, sharded)
        step, resume_dir = stage1.step, None  # the checkpoint is consumed
    if step < config.stage1.steps:  # stop_at in stage 1
        return _stopped(accelerator, config, student, summary, step)
    stage1_path = output_dir / STAGE1_FILE
    if mse_before and main:  # stage 1 ended in this process: its per-layer MSE, kept for a run resumed later
        mse_after = alignment_mse(student, teacher, replaced, heldout, batch_size)
        atomic_write_text(stage1_path, json.dumps({
            "steps": config.stage1.steps, "final_loss": stage1.losses[-1] if stage1 and stage1.losses else None,
            "alignment_mse": {str(i): {"before": mse_before[i], "after": mse_after[i]} for i in replaced}}, indent=2))

    selection = None
    if plan.kept is None:  # auto: select on the stage-1 student, then restore attention in the chosen layers
        selection = select_layers(accelerator, config, teacher, student, rows["stage2"], plan.num_keep,
                                  resumed=resume_dir is not None)
        student = restore_attention(teacher, student, selection["layers"])
    kept = list(student.distill_init_report.kept)
    replaced = list(student.distill_init_report.replaced)
    summary.update(kept_attention=kept, replaced=replaced, init_report=student.distill_init_report.as_dict())
    if selection is not None:
        summary["selection"] = selection

    stage2 = None
    if config.stage2.steps:
        lora = config.stage2.train == "lora"
        model = student
        if lora:
            model = lora_model(student, config.stage2.lora, exclude=tuple(f"model.layers.{i}.mixer" for i in replaced),
                               key="stage2.lora")
        trained_model = stage_copy(model, sharded)
        base = trained_model.get_base_model() if lora else trained_model
        trained = list(base.parameters()) if config.stage2.train == "all" else mixer_parameters(base, replaced)
        if lora:
            trained = trained + [p for n, p in trained_model.named_parameters() if "lora_" in n]
        objective = DistillationObjective(trained_model, teacher, config.stage2.temperature, config.stage2.ce_weight)
        stage2 = run_stage(accelerator, config, objective, trained, rows["stage2"], "stage2", (resume_dir, manifest),
                           step, stage1_end, last, log)
        step = stage2.step
        keep_trained(model, accelerator.unwrap_model(stage2.objective).student, sharded)
        student = model
    if step < config.total_steps:
        return _stopped(accelerator, config, student, summary, step)

    merge = config.stage2.train == "lora" and config.stage2.lora.merge
    student = save_model(accelerator, student, tokenizer, output_dir, merge)
    if main:
        after = measure({"student": student}, heldout, batch_size)
        results = {**before, **after}
        summary.update(
            steps=step, heldout_rows=len(heldout),
            stage1=json.loads(stage1_path.read_text()),
            stage2={"steps": config.stage2.steps, "train": config.stage2.train,
                    "final_loss": stage2.losses[-1] if stage2 and stage2.losses else None},
            heldout=results, loss_ratio=results["student"]["loss"] / results["teacher"]["loss"],
            saved_to=str(output_dir),
        )
        atomic_write_text(output_dir / "summary.json", json.dumps(summary, indent=2))
    accelerator.end_training()
    return DistillResult(json.loads(json.dumps(summary)), student)  # as summary.json reads (string keys)


@dataclass
class StageResult:
    step: int
    losses: list[float]
    objective: nn.Module


def run_stage(accelerator, config: DistillConfig, objective: nn.Module, trained: list[nn.Parameter], rows: Dataset,
              name: str, resume: tuple, step: int, first: int, last: int, log) -> StageResult:
    """Train ``trained`` (everything else of the objective frozen) on ``objective`` over ``rows``, from global
    ``step`` to ``last``; the stage's steps are ``first + 1 ..``. ``resume``: ``(checkpoint dir, manifest)``
    of a checkpoint in this stage to continue from, or ``(None, None)``.

    AdamW at the stage's ``lr`` (betas 0.9, 0.95, ``train.weight_decay``), linear warmup, cosine to a tenth at the
    stage's end; the rows in the order of :class:`~memlm.training.data.EpochSampler` of ``train.seed`` plus the
    stage's number (the stages read different orders)."""
    section = getattr(config, name)
    objective.requires_grad_(False)
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=section.lr, betas=(0.9, 0.95), weight_decay=config.train.weight_decay)
    schedule = ScheduleSection(kind="cosine", warmup_steps=section.warmup_steps, min_lr_ratio=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda at: lr_factor(at, schedule, section.steps))
    stage = int(name[-1])
    loader = make_loader(rows, section.batch_size, config.train.seed + stage, collate)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    check_loader(accelerator, rows, loader, f"{name}.batch_size", section.batch_size)
    resume_dir, manifest = resume
    if resume_dir is not None:
        step = load_checkpoint(accelerator, resume_dir, objective, optimizer, scheduler, manifest)
        accelerator.print(f"[memlm] resumed {name} from {resume_dir} at step {step}")
    step = max(step, first)
    objective.train()
    accum = config.train.gradient_accumulation_steps
    batches = micro_batches(accelerator, loader, (step - first) * accum) if step < last else ()
    loop = optimize(
        accelerator, objective, optimizer, scheduler, batches, lambda batch: objective(**batch),
        first_step=step, last_step=last, max_grad_norm=config.train.max_grad_norm, log_every=config.train.log_every,
        max_minutes=None, log=log,
        save=lambda at: save_run_checkpoint(accelerator, config, objective, optimizer, scheduler, at),
        checkpoint_every=config.checkpoint.every, desc=name, extra={"stage": stage},
    )
    return StageResult(loop.step, loop.losses, objective)


def select_layers(accelerator, config: DistillConfig, teacher: nn.Module, student: nn.Module, rows: Dataset,
                  num_keep: int, resumed: bool) -> dict:
    """:class:`~memlm.distill.selection.Selection` as JSON (``layers``, ``kl`` by layer, ``ranking``,
    ``baseline_kl``): the ``num_keep`` layers of the all-linear stage-1 student whose
    restored attention lowers the KL to the teacher most (:func:`memlm.distill.selection.select_attention_layers`),
    on the first ``selection.batches`` batches of stage 2's size; kept in ``output_dir/selection.json``, which a
    run resumed in stage 2 reads back."""
    path = Path(config.output_dir) / SELECTION_FILE
    if resumed:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: a run resumed in stage 2 of keep_attention=auto reads the "
                                  "layers it selected there")
        return json.loads(path.read_text())
    loader = make_loader(rows, config.stage2.batch_size, config.train.seed, collate)
    batches = [{"input_ids": batch["input_ids"].to(accelerator.device),
                "attention_mask": batch["loss_mask"].to(accelerator.device)}
               for batch, _ in zip(loader, range(config.selection.batches), strict=False)]
    selection = json.loads(json.dumps(select_attention_layers(teacher, student, batches, num_keep).as_dict()))
    if accelerator.is_main_process:
        atomic_write_text(path, json.dumps(selection, indent=2))
    return selection


def _stopped(accelerator, config: DistillConfig, student: nn.Module, summary: dict, step: int) -> DistillResult:
    """The result of a run that ``stop_at`` ended at ``step`` (its checkpoint is written)."""
    summary.update(steps=step, stopped_at=step)
    if accelerator.is_main_process:
        atomic_write_text(Path(config.output_dir) / "summary.json", json.dumps(summary, indent=2))
    accelerator.end_training()
    return DistillResult(summary, student)
