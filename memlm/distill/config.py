"""The distillation recipe's configuration (``recipes/distill.py``): a YAML file of sections, checked strictly.

    output_dir: runs/distill
    teacher:    DIR_OR_HUB_NAME          a Llama/Mistral/Qwen2/Qwen3 causal LM; its tokenizer is the run's
    student:    {keep_attention: [3, 7] | 0.25 | auto, mixer: gated_deltanet, mixer_config: {...}}
    selection:  {keep: 0.25 | 2, batches: 4}          with keep_attention: auto
    data:       the data section of the training recipes (text sources: text | json | parquet | hub | niah)
    stage1:     {steps, lr, batch_size, warmup_steps, seq_len}  attention-output alignment (MSE), mixers alone
    stage2:     {steps, lr, batch_size, warmup_steps, seq_len, temperature, ce_weight, train: mixers | all | lora,
                 lora: {r, alpha, dropout, target_modules, merge}}   end-to-end KL distillation
    train:      {seed, gradient_accumulation_steps, max_grad_norm, weight_decay, precision, log_every}
    eval:       {heldout_rows, batch_size, files, source}
    checkpoint: {every, resume_from, keep}             as in the training recipes (steps count across stages)
    logging:    {trackers, project}

The sections, their key and type checks, the ``key.sub=value`` overrides and the data, checkpoint and logging
sections are the training recipes' (:mod:`memlm.training.config`). :func:`config_from_dict` checks everything
that needs no file; :func:`check_teacher` then reads the teacher's ``config.json`` (nothing else) and checks the
student against it (the teacher's architecture, kept-layer indices, the mixer and its options), before any work.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from memlm.training.config import (
    DataSection,
    LoraSection,
    Recipe,
    build_section,
    check_data,
    check_rules,
    read_recipe,
)

TEXT_SOURCES = ("text", "json", "parquet", "hub", "niah")
STAGE2_TRAIN = ("mixers", "all", "lora")


@dataclasses.dataclass
class StudentSection:
    """``keep_attention``: the layers that stay attention (a list of indices), a fraction of the layers, or
    ``auto`` (chosen after stage 1 by KL-guided selection, ``selection``); ``mixer``: a registered linear mixer
    for the other layers; ``mixer_config``: its ``MemLMConfig`` options (see
    :func:`memlm.distill.hybrid_from_teacher`)."""

    keep_attention: list | float | str = 0.25
    mixer: str = "gated_deltanet"
    mixer_config: dict | None = None


@dataclasses.dataclass
class SelectionSection:
    """With ``student.keep_attention: auto``: keep ``keep`` attention layers (a count, or a fraction of the
    layers), chosen on ``batches`` training batches (stage 2's batch size) by
    :func:`memlm.distill.selection.select_attention_layers`."""

    keep: int | float | None = None
    batches: int = 4


@dataclasses.dataclass
class StageOneSection:
    """Attention-output alignment: ``steps`` optimizer steps (0: none) of AdamW at ``lr`` (linear warmup over
    ``warmup_steps``, then cosine to a tenth), ``batch_size`` rows per process and micro-step."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 8
    warmup_steps: int = 0
    seq_len: int | None = None


@dataclasses.dataclass
class StageTwoSection:
    """End-to-end distillation: KL(teacher || student) at ``temperature`` (+ ``ce_weight`` x next-token loss).
    ``train``: ``mixers`` (the new mixers only), ``all`` (every student weight) or ``lora`` (the new mixers, and
    peft LoRA adapters of ``lora`` on the other modules it names). ``seq_len`` (both stages): the rows' length in
    this stage (default ``data.seq_len``; another length needs ``eval.files``)."""

    steps: int = 100
    lr: float = 1e-4
    batch_size: int = 8
    warmup_steps: int = 0
    seq_len: int | None = None
    temperature: float = 1.0
    ce_weight: float = 0.0
    train: str = "mixers"
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)


@dataclasses.dataclass
class DistillTrainSection:
    """Shared by both stages: AdamW's ``weight_decay`` (betas 0.9, 0.95), gradient clipping, precision."""

    seed: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    precision: str = "no"
    log_every: int = 10


@dataclasses.dataclass
class DistillEvalSection:
    """The held-out rows the summary's loss (teacher, student before and after), per-layer alignment MSE and
    copy recall are measured on: without ``files``, the last ``heldout_rows`` packed rows of the data (never
    trained on); with ``files``, the first ``heldout_rows`` rows packed from these local files of ``source``
    (``text``, ``json``, ``parquet``; ``data.text_field`` names the column), e.g. beside a streamed hub dataset."""

    heldout_rows: int = 8
    batch_size: int = 8
    files: list | None = None
    source: str = "text"


@dataclasses.dataclass(kw_only=True)
class DistillConfig(Recipe):
    teacher: str
    data: DataSection
    student: StudentSection = dataclasses.field(default_factory=StudentSection)
    selection: SelectionSection = dataclasses.field(default_factory=SelectionSection)
    stage1: StageOneSection = dataclasses.field(default_factory=StageOneSection)
    stage2: StageTwoSection = dataclasses.field(default_factory=StageTwoSection)
    train: DistillTrainSection = dataclasses.field(default_factory=DistillTrainSection)
    eval: DistillEvalSection = dataclasses.field(default_factory=DistillEvalSection)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of both stages: checkpoints and ``stop_at`` count them in one sequence."""
        return self.stage1.steps + self.stage2.steps


CHOICES = {"data.source": TEXT_SOURCES, "eval.source": ("text", "json", "parquet"), "stage2.train": STAGE2_TRAIN,
           "train.precision": ("no", "bf16", "fp16")}
POSITIVE = ("stage1.batch_size", "stage2.batch_size", "selection.batches", "train.gradient_accumulation_steps",
            "train.log_every", "eval.heldout_rows", "eval.batch_size", "data.seq_len", "checkpoint.keep",
            "stage2.lora.r", "stage1.seq_len", "stage2.seq_len")
POSITIVE_NUMBERS = ("stage1.lr", "stage2.lr", "stage2.temperature", "stage2.lora.alpha")
NON_NEGATIVE = ("stage1.steps", "stage2.steps", "stage1.warmup_steps", "stage2.warmup_steps", "stage2.ce_weight",
                "train.seed", "train.max_grad_norm", "train.weight_decay", "checkpoint.every")
FRACTIONS = {"stage2.lora.dropout": "[0, 1)"}


def load_config(path: str | Path, overrides: list[str] = ()) -> DistillConfig:
    """Read a YAML distillation recipe, apply ``key.sub=value`` overrides, and check it (but the teacher)."""
    return config_from_dict(read_recipe(path, overrides))


def config_from_dict(raw: dict) -> DistillConfig:
    """Build and check a :class:`DistillConfig`; ValueError naming the key, the value and what is allowed."""
    lora = (raw.get("stage2") or {}).get("lora") if isinstance(raw.get("stage2"), dict) else None
    if isinstance(lora, dict) and "enabled" in lora:
        raise ValueError(f"stage2.lora.enabled={lora['enabled']!r}: leave it out; stage2.train: lora turns LoRA on")
    config = build_section(DistillConfig, raw, "")
    check_rules(config, CHOICES, POSITIVE, POSITIVE_NUMBERS, NON_NEGATIVE, FRACTIONS)
    check_data(config.data)
    if config.data.streaming and not config.eval.files:
        raise ValueError("data.streaming=True needs eval.files (the held-out data): without them the held-out rows "
                         "are cut from the packed training data, which a stream cannot")
    for stage in ("stage1", "stage2"):
        length = getattr(config, stage).seq_len
        if length not in (None, config.data.seq_len) and not config.eval.files:
            raise ValueError(f"{stage}.seq_len={length} (not data.seq_len={config.data.seq_len}) needs eval.files: "
                             "the held-out rows are otherwise cut from the data packed at data.seq_len")
    if config.eval.files is not None and not config.eval.files:
        raise ValueError("eval.files=[]: give held-out files, or leave eval.files out to hold out the last "
                         "eval.heldout_rows rows of the data")
    if config.total_steps == 0:
        raise ValueError("stage1.steps=0 and stage2.steps=0: nothing to train; give either a positive count")
    from memlm.layers.registry import linear_mixers

    if config.student.mixer not in linear_mixers():
        raise ValueError(f"student.mixer={config.student.mixer!r} is not a registered linear mixer; allowed: "
                         f"{linear_mixers()}")
    keep = config.student.keep_attention
    if isinstance(keep, str) and keep != "auto":
        raise ValueError(f"student.keep_attention={keep!r} is not allowed: a list of layer indices, a fraction in "
                         "[0, 1], or 'auto'")
    if keep == "auto":
        if config.selection.keep is None:
            raise ValueError("student.keep_attention='auto' needs selection.keep: how many attention layers "
                             "to keep (a count, or a fraction of the layers)")
        if config.stage2.steps == 0:
            raise ValueError("student.keep_attention='auto' selects on the stage-1 student for stage 2: "
                             "stage2.steps must be positive")
    elif config.selection.keep is not None:
        raise ValueError(f"selection.keep={config.selection.keep!r} is read only with student.keep_attention='auto' "
                         f"(here {keep!r}): drop it")
    if config.selection.keep is not None and config.selection.keep < 0:
        raise ValueError(f"selection.keep={config.selection.keep!r} must be >= 0")
    return config


@dataclasses.dataclass
class TeacherPlan:
    """What :func:`check_teacher` found: the teacher's layer count and the kept layers (None for ``auto``,
    where ``num_keep`` layers are selected later)."""

    num_layers: int
    kept: list[int] | None
    num_keep: int | None


def check_teacher(config: DistillConfig) -> TeacherPlan:
    """Check the teacher and the student against it, reading only the teacher's config: a supported
    architecture, kept-layer indices in range, a registered mixer, valid ``mixer_config`` (the student's config
    is built, no weights). ValueError naming the key, the value and what is allowed."""
    from transformers import AutoConfig

    from memlm.distill.student import kept_layers, student_config, teacher_family

    try:
        source = AutoConfig.from_pretrained(config.teacher)
    except (OSError, ValueError) as error:
        raise ValueError(f"teacher={config.teacher!r} is no causal-LM directory or hub name with a readable "
                         f"config.json ({error})") from error
    try:
        family = teacher_family(source)
    except ValueError as error:
        raise ValueError(f"teacher={config.teacher!r}: {error}") from error
    student, layers = config.student, source.num_hidden_layers
    num_keep = None
    if student.keep_attention == "auto":
        keep = config.selection.keep
        num_keep = round(keep * layers) if isinstance(keep, float) else keep
        if isinstance(keep, float) and keep > 1 or num_keep > layers:
            raise ValueError(f"selection.keep={keep!r} is not allowed: a count in [0, {layers}] or a fraction in "
                             f"[0, 1] of the teacher's {layers} layers")
        kept, planned = None, []
    else:
        try:
            kept = planned = kept_layers(student.keep_attention, layers)
        except ValueError as error:
            raise ValueError(f"student.keep_attention: {error}") from error
    try:
        student_config(source, family, planned, student.mixer, student.mixer_config)
    except ValueError as error:
        raise ValueError(f"student (mixer={student.mixer!r}, mixer_config={student.mixer_config!r}): {error}") \
            from error
    return TeacherPlan(layers, kept, num_keep)
