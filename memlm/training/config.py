"""The training recipe's configuration: a YAML file of sections, checked strictly before any work.

    output_dir: runs/demo
    model:      {config: {...MemLMConfig fields...}}  or  {pretrained: DIR_OR_HUB_NAME}
    tokenizer:  {kind: byte | bpe | integer | pretrained, ...}
    data:       {source: text | json | parquet | hub | mqar | passkey | niah, ...}
    optimizer:  {lr, weight_decay, betas, eps}
    schedule:   {kind: cosine | linear | constant, warmup_steps, min_lr_ratio}
    train:      {max_steps, batch_size, gradient_accumulation_steps, max_grad_norm, precision, seed, log_every,
                 max_minutes}
    checkpoint: {every, resume_from, keep}
    logging:    {trackers, project}
    lora:       {enabled, r, alpha, dropout, target_modules, merge}
    eval:       {tasks, ...}

Command-line overrides use dotted keys (``train.max_steps=20 output_dir=/tmp/run``), their values
parsed as YAML. An unknown key, a missing required key or a value of the wrong type or range raises
``ValueError`` naming the key, the value and the valid keys or values. ``model.config`` is checked as a whole
here too (its keys must be ``MemLMConfig`` fields, and the config must build), so a bad model field fails before
any data is read.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Modules of memlm's mixers and MLP plus the usual names of Llama/Qwen/Mistral layers.
DEFAULT_LORA_TARGETS = [
    "q_proj", "k_proj", "v_proj", "o_proj",  # attention (memlm and HF models)
    "in_proj_qkv", "in_proj_z", "out_proj",  # GatedDeltaNet
    "f_proj", "i_proj",  # HGRN-2 (q_proj, o_proj above)
    "g_proj",  # GLA and DeltaNet output gates (their q/k/v/o_proj above)
    "gate_proj", "up_proj", "down_proj",  # MLP
]


@dataclasses.dataclass
class ModelSection:
    """Exactly one of ``config`` (``MemLMConfig`` fields, a new model) or ``pretrained`` (any HF causal LM).

    ``preset``: ``jrt_rnn`` builds ``config`` with :func:`memlm.jrt_rnn_config` (its arguments and any
    ``MemLMConfig`` field in ``config``); the ``mask_token_id`` of a JRT-RNN (or of any config with
    ``prefix_lm_objective``) defaults to the tokenizer's mask token, or else its pad token. Every key of
    ``config`` must be one of these (or ``hybrid_ratio``, ``rope_theta``).
    """

    config: dict | None = None
    preset: str | None = None
    pretrained: str | None = None
    attn_implementation: str | None = None
    gradient_checkpointing: bool = False


@dataclasses.dataclass
class TokenizerSection:
    """``byte`` (memlm's byte-level), ``bpe`` (trained on the data files), ``integer`` (ids as text, for
    synthetic tasks) or ``pretrained`` (``path``, default ``model.pretrained``)."""

    kind: str = "byte"
    path: str | None = None
    vocab_size: int | None = None


@dataclasses.dataclass
class DataSection:
    """Text sources are tokenized, each document ended with EOS, and packed into rows of ``seq_len``.

    ``source``: ``text`` / ``json`` / ``parquet`` (local ``files``), ``hub`` (dataset ``name``), or a
    synthetic task: ``mqar`` (rows with labels; arguments of :func:`memlm.data.mqar` in ``mqar``; with
    ``mqar.mixture``, a list of ``{num_examples, seq_len, num_kv_pairs}``, the training rows are
    :func:`memlm.data.mqar_mixture` of it and the other arguments describe the held-out evaluation rows),
    ``passkey`` (rows with labels; arguments of :func:`memlm.data.passkey` in ``passkey``) or
    ``niah`` (needle-in-a-haystack documents, packed like text; arguments of
    :func:`memlm.data.niah_grid` in ``niah``, lengths counted in the recipe's tokenizer).
    ``completion_field``: a column holding each row's completion; ``text_field`` then holds its prompt, and
    only the completion (and its EOS) is trained on.
    ``prefix_length``: for models with ``prefix_lm_objective`` (JRT-RNN), the first ``prefix_length`` tokens of
    each document (or synthetic row) are its prefix; without it, a document's prefix is its prompt (the
    leading tokens that carry no loss: ``text_field`` with ``completion_field``, an MQAR row's context).
    """

    source: str = "text"
    files: list | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    text_field: str = "text"
    completion_field: str | None = None
    streaming: bool = False
    seq_len: int = 512
    max_documents: int | None = None
    mqar: dict | None = None
    passkey: dict | None = None
    niah: dict | None = None
    prefix_length: int | None = None


@dataclasses.dataclass
class OptimizerSection:
    """AdamW."""

    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: list = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8


@dataclasses.dataclass
class ScheduleSection:
    """Linear warmup for ``warmup_steps``, then ``kind`` decay to ``min_lr_ratio * lr`` at ``train.max_steps``."""

    kind: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1


@dataclasses.dataclass
class TrainSection:
    """``batch_size`` is per process and per micro-step; the global batch is
    ``batch_size * gradient_accumulation_steps * num_processes`` rows. ``max_minutes``: a wall-clock limit
    on training (as Lightning's ``max_time``): the run ends after the first optimizer step past it, saves,
    and evaluates as if ``max_steps`` were reached; the summary records ``stopped_by_time``. The learning
    rate schedule still runs to ``max_steps``."""

    max_steps: int
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "no"
    seed: int = 0
    log_every: int = 10
    max_minutes: float | None = None


@dataclasses.dataclass
class CheckpointSection:
    """``accelerator.save_state`` every ``every`` optimizer steps (0: only at the end), keeping the last
    ``keep``; ``resume_from``: ``latest`` or a checkpoint directory."""

    every: int = 0
    resume_from: str | None = None
    keep: int = 2


@dataclasses.dataclass
class LoggingSection:
    """Accelerate trackers (``tensorboard``, ``trackio``, ``wandb``, ...); those not installed are skipped
    with a warning."""

    trackers: list = dataclasses.field(default_factory=lambda: ["tensorboard"])
    project: str = "memlm"


@dataclasses.dataclass
class LoraSection:
    """LoRA through peft; ``merge`` folds the adapters into the weights before the final save."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list | str = dataclasses.field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    merge: bool = True


@dataclasses.dataclass
class EvalSection:
    """Evaluations run after training. ``tasks``: ``mqar`` / ``passkey`` (need the same ``data.source``)."""

    tasks: list = dataclasses.field(default_factory=list)
    num_examples: int = 256
    seed: int = 1234


@dataclasses.dataclass(kw_only=True)
class Recipe:
    """Base of a recipe's top-level dataclass (the training recipe's, distillation's), with the keys every recipe
    has: where the run writes, its checkpoints and its logging. ``to_dict`` is what ``recipe.json`` and the
    checkpoints' manifests record, and what a resumed run is compared with."""

    output_dir: str
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(kw_only=True)
class RecipeConfig(Recipe):
    train: TrainSection
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    tokenizer: TokenizerSection = dataclasses.field(default_factory=TokenizerSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optimizer: OptimizerSection = dataclasses.field(default_factory=OptimizerSection)
    schedule: ScheduleSection = dataclasses.field(default_factory=ScheduleSection)
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)


CHOICES = {
    "model.preset": (None, "jrt_rnn"),
    "tokenizer.kind": ("byte", "bpe", "integer", "pretrained"),
    "data.source": ("text", "json", "parquet", "hub", "mqar", "passkey", "niah"),
    "schedule.kind": ("cosine", "linear", "constant"),
    "train.precision": ("no", "bf16", "fp16"),
    "eval.tasks": ("mqar", "passkey"),
}
FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
POSITIVE = ("train.max_steps", "train.batch_size", "train.gradient_accumulation_steps", "train.log_every",
            "data.seq_len", "data.prefix_length", "checkpoint.keep", "lora.r", "eval.num_examples", "train.max_minutes")
POSITIVE_NUMBERS = ("optimizer.lr", "optimizer.eps", "lora.alpha")
NON_NEGATIVE = ("checkpoint.every", "schedule.warmup_steps", "optimizer.weight_decay", "train.max_grad_norm",
                "train.seed", "eval.seed")
FRACTIONS = {"schedule.min_lr_ratio": "[0, 1]", "lora.dropout": "[0, 1)", "optimizer.betas": "[0, 1)"}
# model.config keys that are no MemLMConfig field but are read: the layer pattern and transformers' RoPE base
MODEL_CONFIG_EXTRA_KEYS = ("hybrid_ratio", "rope_theta")


def load_config(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, and check everything."""
    return config_from_dict(read_recipe(path, overrides))


def read_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """The YAML file's mapping of sections with the ``key.sub=value`` overrides applied (not yet checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return raw


def recipe_arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of a recipe script (``recipes/train.py``, ``recipes/distill.py``): ``--config FILE``,
    ``--stop-at N``, ``--overwrite`` and dotted overrides, which may come before, between or after the options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML recipe")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="end after this optimizer step with a checkpoint (resume later with "
                             "checkpoint.resume_from=latest)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output_dir that holds another run (its checkpoints, log and "
                             "summary are deleted); without it such an output_dir is refused")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
    args = parser.parse_intermixed_args(argv)
    if args.stop_at is not None and args.stop_at <= 0:
        parser.error(f"--stop-at must be positive, got {args.stop_at}")
    return args


def apply_override(raw: dict, override: str) -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (value parsed as YAML)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {override!r} must look like 'section.key=value'")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ValueError(f"override {override!r}: the value {value!r} is not valid YAML ({error})") from error


def config_from_dict(raw: dict) -> RecipeConfig:
    config = build_section(RecipeConfig, raw, "")
    _check_values(config)
    return config


def build_section(cls, raw: Any, where: str):
    """Instantiate dataclass ``cls`` from ``raw`` with strict key and type checks."""
    label = where or "the config"
    if not isinstance(raw, dict):
        raise ValueError(f"{label} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        keys = [_join(where, k) for k in unknown]
        raise ValueError(f"unknown key(s) {keys} in {label}; valid keys: {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in raw and _is_required(f)]
    if missing:
        raise ValueError(f"missing required key(s) {[_join(where, k) for k in missing]} in {label}")
    values = {}
    for name, value in raw.items():
        hint, key = hints[name], _join(where, name)
        built = dataclasses.is_dataclass(hint)
        values[name] = build_section(hint, value, key) if built else check_type(key, value, hint)
    return cls(**values)


def _is_required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def check_type(key: str, value: Any, hint) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str) and FLOAT_LITERAL.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "3e-4" (no dot) as a string
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool, list, dict) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ValueError(f"{key} must be {names}, got {value!r}")


def _check_values(config: RecipeConfig) -> None:
    check_rules(config, CHOICES, POSITIVE, POSITIVE_NUMBERS, NON_NEGATIVE, FRACTIONS)
    if len(config.optimizer.betas) != 2:
        raise ValueError(f"optimizer.betas must be two numbers, got {config.optimizer.betas!r}")
    model = config.model
    if (model.config is None) == (model.pretrained is None):
        raise ValueError(
            "model: give exactly one of model.config (a new MemLM model) or model.pretrained (a path/name)"
        )
    if model.preset is not None and model.config is None:
        raise ValueError(f"model.preset={model.preset!r} builds a new model from model.config, which is missing")
    check_data(config.data)
    for task in ("mqar", "passkey"):
        if task in config.eval.tasks and config.data.source != task:
            raise ValueError(f"eval.tasks contains {task!r}, which needs data.source={task!r}")
    if config.tokenizer.kind == "pretrained" and not (config.tokenizer.path or model.pretrained):
        raise ValueError("tokenizer.kind='pretrained' needs tokenizer.path (or model.pretrained)")
    if model.config is not None:
        check_model_config(model.config, model.preset)


def check_rules(config, choices: dict, positive=(), positive_numbers=(), non_negative=(), fractions=None) -> None:
    """Check the dotted keys of a built config: each value of ``choices[key]`` is one of them, ``positive`` keys are
    > 0 (or None), ``positive_numbers`` finite > 0, ``non_negative`` finite >= 0 (or None), and ``fractions[key]``
    within its interval (each item of a list value)."""
    for key, allowed in choices.items():
        value = get_key(config, key)
        for item in value if isinstance(value, list) else [value]:
            if item not in allowed:
                raise ValueError(f"{key}={item!r} is not allowed; choose from {list(allowed)}")
    for key in positive:
        if get_key(config, key) is not None and get_key(config, key) <= 0:
            raise ValueError(f"{key} must be positive, got {get_key(config, key)!r}")
    for key in positive_numbers:
        check_range(key, get_key(config, key), "(0, inf)")
    for key in non_negative:
        if get_key(config, key) is not None:
            check_range(key, get_key(config, key), "[0, inf)")
    for key, interval in (fractions or {}).items():
        values = get_key(config, key)
        for value in values if isinstance(values, list) else [values]:
            check_range(key, value, interval)


def check_data(data: DataSection) -> None:
    """The ``data`` section names what its source needs."""
    if data.source in ("text", "json", "parquet") and not data.files:
        raise ValueError(f"data.source={data.source!r} needs data.files (a list of local files)")
    if data.source == "hub" and not data.name:
        raise ValueError("data.source='hub' needs data.name (a dataset name on the hub)")
    if data.source == "mqar" and not data.mqar:
        raise ValueError("data.source='mqar' needs data.mqar: {num_examples, num_kv_pairs, vocab_size}")
    if data.source == "mqar" and "mixture" in data.mqar:
        missing = [key for key in ("num_kv_pairs", "vocab_size") if key not in data.mqar]
        if missing:
            raise ValueError(f"data.mqar.mixture trains on a mixture; data.mqar still needs {missing} "
                             "for the held-out evaluation rows")
    if data.source == "niah" and not data.niah:
        raise ValueError("data.source='niah' needs data.niah: {context_lengths, depths, num_examples_per_cell, ...}")
    if data.source == "passkey" and not data.passkey:
        raise ValueError("data.source='passkey' needs data.passkey: {num_examples, vocab_size, key_length, ...}")


def check_range(key: str, value, interval: str) -> None:
    """``value`` is a finite number in ``interval``, written ``[low, high)`` etc. (``inf``: no upper bound)."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if (not number or value < low or value > high or (interval[0] == "(" and value == low)
            or (interval[-1] == ")" and value == high)):
        raise ValueError(f"{key}={value!r} is not allowed: a finite number in {interval}")


def model_config_keys(preset: str | None) -> list[str]:
    """The keys ``model.config`` may hold: ``MemLMConfig`` fields, ``hybrid_ratio``, ``rope_theta`` and, with
    ``preset: jrt_rnn``, the arguments of :func:`memlm.jrt_rnn_config`."""
    from memlm.models.configuration_memlm import config_keys
    from memlm.models.jrt_rnn import jrt_rnn_config

    keys = set(config_keys()[0]) | set(MODEL_CONFIG_EXTRA_KEYS)
    if preset == "jrt_rnn":
        keys |= {name for name, p in inspect.signature(jrt_rnn_config).parameters.items()
                 if p.kind is not inspect.Parameter.VAR_KEYWORD}
    return sorted(keys)


def check_model_config(fields: dict, preset: str | None) -> None:
    """Refuse every ``model.config`` key that no ``MemLMConfig`` reads (naming the closest valid keys), then build
    the config once, so that each field's own check runs now, before any data is read. Fields the tokenizer
    supplies at build time (``vocab_size``, the special token ids, a JRT-RNN's ``mask_token_id``) are checked
    against it then; here a missing ``vocab_size`` is taken as large enough for any token id given."""
    from memlm.models.configuration_memlm import MemLMConfig
    from memlm.models.jrt_rnn import jrt_rnn_config

    valid = model_config_keys(preset)
    for key in fields:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=3)
            hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
            raise ValueError(f"unknown key model.config.{key} (no MemLMConfig field); {hint}valid keys: {valid}")
    fields = dict(fields)
    if "vocab_size" not in fields:
        ids = [v for k, v in fields.items() if k.endswith("token_id") and isinstance(v, int) and v >= 0]
        fields["vocab_size"] = max([*ids, 0]) + 1
    try:
        (jrt_rnn_config if preset == "jrt_rnn" else MemLMConfig)(**fields)
    except (ValueError, TypeError) as error:
        raise ValueError(f"model.config: {error}") from error


def get_key(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
