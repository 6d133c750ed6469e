"""A hybrid student built from a pretrained Transformer: the first step of distilling a Transformer into a hybrid.

:func:`hybrid_from_teacher` turns a Llama/Qwen2/Qwen3/Mistral-style decoder (``SUPPORTED_TEACHERS``) into a
:class:`~memlm.MemLMForCausalLM` whose layers are either the teacher's attention, copied exactly, or a registered
linear mixer initialized from that attention's projections, as RADLADS, Mamba-in-the-Llama and LoLCATs start
their students. Everything else (embeddings, every layer's norms and MLP, the final norm, ``lm_head``, RoPE and
norm settings) is the teacher's, so a student that keeps every attention layer computes the teacher's logits.

Which tensors a replaced layer's mixer takes from the teacher's attention (``MIXER_COPIES``; ``q``, ``k``, ``v``,
``o`` are the attention's ``{q,k,v,o}_proj.weight``; ``k`` and ``v`` of a grouped-query attention are expanded to
one head per query head, head ``h`` taking key/value head ``h // (H / Hkv)``, as the attention reads them)::

    gated_deltanet  in_proj_qkv = [q; k; v],  out_proj = o
    gla, deltanet, kda, based   {q,k,v,o}_proj = q, k, v, o
    hgrn2           q_proj = q,  i_proj = v (the input is HGRN-2's value),  o_proj = o   (f_proj: default)
    mamba2          in_proj = [gate: default; x = v; B = k; C = q; dt: default],  out_proj = o  (Mamba-in-the-Llama)

The mixer's head layout defaults to the attention's (``linear_num_key_heads = linear_num_value_heads = H``,
``linear_key_head_dim = linear_value_head_dim = head_dim``; Mamba-2: ``H`` heads of ``head_dim`` channels,
``d_state = head_dim`` and one group per head), so these shapes line up; ``mixer_config`` may change it. A tensor
whose shape does not line up keeps the mixer's default initialization, and so do the mixer's own parameters
(gates, decays, convolutions, output norms). Nothing is dropped silently: the student carries a
:class:`InitReport` as ``student.distill_init_report`` naming, per replaced layer, each copied tensor and its
source, each parameter left at its default, and each teacher tensor of that layer not used (q/k/v/o biases,
Qwen3's q/k norms: the mixers have none).
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from memlm.convert.common import check_keys, rope_parameters
from memlm.layers.registry import linear_mixers
from memlm.models.configuration_memlm import MemLMConfig, config_keys
from memlm.models.layer_pattern import hybrid_layer_types
from memlm.models.modeling_memlm import MemLMForCausalLM


@dataclasses.dataclass(frozen=True)
class TeacherFamily:
    """How a transformers decoder family differs from Llama, in memlm's attention options.

    ``qk_norm``: memlm's ``attention_qk_norm`` (Qwen3: ``"head"``). ``bias``: ``"config"`` (q/k/v/o biases when
    ``attention_bias``), ``"qkv"`` (q/k/v always, o never: Qwen2) or ``"none"`` (Mistral). ``sliding``: where the
    sliding-window layers are: ``"layer_types"`` (the config's list), ``"all"`` (every layer when
    ``sliding_window`` is set: Mistral) or ``"none"``. ``keys``: the config keys read (any other key that
    transformers does not write into every config is refused)."""

    qk_norm: str | None
    bias: str
    sliding: str
    keys: frozenset[str]


COMMON_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
    "use_cache", "tie_word_embeddings", "rope_parameters", "rope_theta", "rope_scaling", "attention_dropout",
    "pad_token_id", "bos_token_id", "eos_token_id",
})
QWEN_SLIDING_KEYS = frozenset({"layer_types", "sliding_window", "use_sliding_window", "max_window_layers"})
# transformers model_type -> its differences; pretraining_tp is unread by transformers 5's Llama
SUPPORTED_TEACHERS: dict[str, TeacherFamily] = {
    "llama": TeacherFamily(None, "config", "none", COMMON_KEYS | {"attention_bias", "mlp_bias", "pretraining_tp"}),
    "mistral": TeacherFamily(None, "none", "all", COMMON_KEYS | {"sliding_window"}),
    "qwen2": TeacherFamily(None, "qkv", "layer_types", COMMON_KEYS | QWEN_SLIDING_KEYS),
    "qwen3": TeacherFamily("head", "config", "layer_types", COMMON_KEYS | QWEN_SLIDING_KEYS | {"attention_bias"}),
}
# mixer -> {mixer parameter: its blocks of rows, each a teacher projection ("q", "k", "v", "o") or "default" (rows
# kept at the mixer's initialization)}; the rows of each block: mixer_blocks
_QKVO = {f"{p}_proj.weight": (p,) for p in "qkvo"}
MIXER_COPIES: dict[str, dict[str, tuple[str, ...]]] = {
    "gated_deltanet": {"in_proj_qkv.weight": ("q", "k", "v"), "out_proj.weight": ("o",)},
    "gla": _QKVO, "deltanet": _QKVO, "kda": _QKVO, "based": _QKVO,
    "hgrn2": {"q_proj.weight": ("q",), "i_proj.weight": ("v",), "o_proj.weight": ("o",)},
    "mamba2": {"in_proj.weight": ("default", "v", "k", "q", "default"), "out_proj.weight": ("o",)},
}
# the MemLMConfig fields mixer_config may set: the linear mixers' own options
MIXER_CONFIG_PREFIXES = ("linear_", "gla_", "deltanet_", "mamba_")


@dataclasses.dataclass
class InitReport:
    """How :func:`hybrid_from_teacher` initialized the student (``student.distill_init_report``).

    Attributes:
        teacher: the teacher's ``model_type``.
        mixer: the mixer of the replaced layers.
        kept: layers that are the teacher's attention, copied exactly.
        replaced: layers whose attention became ``mixer``.
        copied: per replaced layer, ``{mixer parameter: its source}`` (e.g. ``"in_proj_qkv.weight": "[q; k
            expanded; v expanded]"``).
        default_init: per replaced layer, the mixer parameters left at their default initialization (with the
            reason where a teacher tensor was meant for it but its shape did not line up).
        not_used: per replaced layer, the teacher's attention tensors the mixer has no place for.
    """

    teacher: str
    mixer: str
    kept: list[int]
    replaced: list[int]
    copied: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)
    default_init: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    not_used: dict[int, list[str]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        """A JSON-ready copy (for a run's summary)."""
        return dataclasses.asdict(self)


def hybrid_from_teacher(
    teacher: PreTrainedModel | str | os.PathLike,
    keep_attention: list[int] | float,
    mixer: str = "gated_deltanet",
    mixer_config: dict | None = None,
) -> MemLMForCausalLM:
    """A memlm hybrid initialized from a pretrained Transformer.

    Args:
        teacher: a transformers causal LM whose ``config.model_type`` is in ``SUPPORTED_TEACHERS`` (Llama,
            Mistral, Qwen2, Qwen3), or a local directory / hub name loaded with ``AutoModelForCausalLM``
            (safetensors only, in the checkpoint's dtype).
        keep_attention: the layers that stay softmax attention: a list of layer indices, or a fraction in
            ``[0, 1]`` of the layers (``fraction * L`` rounded half up, placed as ``MemLMConfig(hybrid_ratio=...)``
            places attention: for ``n`` of ``L`` layers, ``g = gcd(n, L)``, the ratio ``(L - n)/g : n/g``, the
            attention layers last in each block; 0.25 of 8 layers keeps layers 3 and 7).
        mixer: the registered linear mixer of the other layers (``memlm.layers.registry.linear_mixers()``).
        mixer_config: ``MemLMConfig`` fields of the linear mixers (names starting with ``linear_``, ``gla_``,
            ``deltanet_``, ``mamba_``) over the defaults that line up with the attention (module docstring).

    Returns:
        A :class:`~memlm.MemLMForCausalLM` in the teacher's dtype, on its device and in its train/eval mode, with
        ``student.distill_init_report`` (:class:`InitReport`). With every layer kept its logits are the teacher's.

    Raises:
        ValueError: before any weight is read or built, naming the value and what is allowed: an unknown
            ``mixer`` or ``mixer_config`` key, a teacher ``model_type`` not in ``SUPPORTED_TEACHERS`` or a
            config option memlm cannot express exactly (``mlp_bias``, an unknown config key or rope type), a
            ``keep_attention`` index out of range or repeated, or a fraction outside ``[0, 1]``.
    """
    if mixer not in linear_mixers():
        raise ValueError(f"mixer={mixer!r} is not a registered linear mixer; allowed: {linear_mixers()}")
    source_config = teacher.config if isinstance(teacher, PreTrainedModel) else AutoConfig.from_pretrained(teacher)
    family = teacher_family(source_config)
    kept = kept_layers(keep_attention, source_config.num_hidden_layers)
    config = student_config(source_config, family, kept, mixer, mixer_config)
    if not isinstance(teacher, PreTrainedModel):
        teacher = AutoModelForCausalLM.from_pretrained(teacher, use_safetensors=True, dtype="auto")
    parameter = next(teacher.parameters())
    student = MemLMForCausalLM(config).to(device=parameter.device, dtype=parameter.dtype)
    report = InitReport(source_config.model_type, mixer, kept, [i for i in range(config.num_hidden_layers)
                                                                 if i not in kept])
    copy_teacher(teacher, student, family, report)
    student.train(teacher.training)
    student.distill_init_report = report
    return student


def teacher_family(config: PreTrainedConfig) -> TeacherFamily:
    """The :class:`TeacherFamily` of a teacher config; ValueError for an unsupported ``model_type`` or a config
    memlm cannot express exactly."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TEACHERS:
        raise ValueError(f"teacher model_type={model_type!r} is not supported; supported: {sorted(SUPPORTED_TEACHERS)}")
    family = SUPPORTED_TEACHERS[model_type]
    where = f"teacher {model_type} config"
    check_keys(config.to_dict(), family.keys, where)
    if getattr(config, "mlp_bias", False):
        raise ValueError(f"{where}: mlp_bias={config.mlp_bias!r} cannot be represented in memlm (its MLPs have no "
                         "biases); allowed: false")
    return family


def kept_layers(keep_attention: list[int] | tuple[int, ...] | float, num_layers: int) -> list[int]:
    """The sorted indices of the layers kept as attention (see :func:`hybrid_from_teacher`); ValueError naming a
    bad value and the allowed range."""
    if isinstance(keep_attention, float):
        if not (math.isfinite(keep_attention) and 0.0 <= keep_attention <= 1.0):
            raise ValueError(f"keep_attention={keep_attention!r}: a fraction must be in [0, 1]")
        count = math.floor(keep_attention * num_layers + 0.5)
        g = math.gcd(count, num_layers)
        pattern = hybrid_layer_types(num_layers, f"{(num_layers - count) // g}:{count // g}")
        return [i for i, layer_type in enumerate(pattern) if layer_type != "linear_attention"]
    if not isinstance(keep_attention, list | tuple):
        raise ValueError(f"keep_attention={keep_attention!r}: give a list of layer indices in [0, {num_layers}) or a "
                         "fraction (float) in [0, 1]")
    for index in keep_attention:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_layers:
            raise ValueError(f"keep_attention holds {index!r}: layer indices are integers in [0, {num_layers}) "
                             f"(the teacher has {num_layers} layers)")
    repeated = sorted({i for i in keep_attention if list(keep_attention).count(i) > 1})
    if repeated:
        raise ValueError(f"keep_attention repeats layers {repeated}: give each layer once")
    return sorted(keep_attention)


def mixer_defaults(mixer: str, heads: int, head_dim: int, hidden_size: int) -> dict:
    """The linear mixers' head layout that lines up with an attention of ``heads`` heads of ``head_dim``."""
    defaults = dict(linear_num_key_heads=heads, linear_num_value_heads=heads, linear_key_head_dim=head_dim,
                    linear_value_head_dim=head_dim)
    expand = heads * head_dim / hidden_size
    if mixer == "mamba2" and int(expand * hidden_size) == heads * head_dim:
        defaults.update(mamba_expand=expand, mamba_head_dim=head_dim, mamba_num_heads=heads, mamba_d_state=head_dim,
                        mamba_n_groups=heads)
    return defaults


def student_config(source: PreTrainedConfig, family: TeacherFamily, kept: list[int], mixer: str,
                   mixer_config: dict | None) -> MemLMConfig:
    """The student's :class:`MemLMConfig`: the teacher's fields, attention options and layer kinds for the kept
    layers, ``mixer`` elsewhere."""
    mixer_config = dict(mixer_config or {})
    allowed = sorted(k for k in config_keys()[0] if k.startswith(MIXER_CONFIG_PREFIXES) and k != "linear_attn_type")
    unknown = sorted(set(mixer_config) - set(allowed))
    if unknown:
        raise ValueError(f"mixer_config keys {unknown} are not linear-mixer fields of MemLMConfig; allowed: {allowed}")
    num_layers, heads = source.num_hidden_layers, source.num_attention_heads
    head_dim = getattr(source, "head_dim", None) or source.hidden_size // heads
    window = getattr(source, "sliding_window", None)
    attention_types = teacher_attention_types(source, family)
    bias = {"config": bool(getattr(source, "attention_bias", False)), "qkv": True, "none": False}[family.bias]
    fields = {name: getattr(source, name) for name in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
        "attention_dropout", "pad_token_id", "bos_token_id", "eos_token_id",
    )}
    return MemLMConfig(
        **fields, head_dim=head_dim, attention_bias=bias, attention_qk_norm=family.qk_norm,
        rope_parameters=rope_parameters(source.to_dict(), f"teacher {source.model_type} config"),
        sliding_window=window if "sliding_attention" in attention_types else None,  # also for restore_attention
        mixer_types=[attention_types[i] if i in kept else mixer for i in range(num_layers)],
        **{**mixer_defaults(mixer, heads, head_dim, source.hidden_size), **mixer_config},
    )


def teacher_attention_types(source: PreTrainedConfig, family: TeacherFamily) -> list[str]:
    """Per layer, the teacher's attention as a memlm mixer: ``"full_attention"`` or ``"sliding_attention"``."""
    if family.sliding == "layer_types":
        types = list(source.layer_types)
    else:
        sliding = family.sliding == "all" and getattr(source, "sliding_window", None)
        types = ["sliding_attention" if sliding else "full_attention"] * source.num_hidden_layers
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ValueError(f"teacher layer_types holds {unknown}: memlm copies 'full_attention' and "
                         "'sliding_attention' layers")
    return types


def restore_attention(teacher: PreTrainedModel, student: MemLMForCausalLM, layers: list[int]) -> MemLMForCausalLM:
    """A copy of ``student`` (built by :func:`hybrid_from_teacher` from ``teacher``) whose ``layers`` are the
    teacher's attention again, copied exactly; every other weight is the student's (trained or not), shared by
    nothing (a new model). Used by layer selection (restore one layer) and to build the final hybrid from an
    all-linear stage-1 student, as arXiv 2512.20569 does. HGRN-2's lower bounds keep the rows of the HGRN-2
    layers that remain (the cumulative bounds of the later ones then start lower, as a model with fewer HGRN-2
    layers has). The copy's ``distill_init_report`` moves ``layers`` from ``replaced`` to ``kept``.

    Raises:
        ValueError: an index out of range or repeated, or a layer that is already attention.
    """
    family = teacher_family(teacher.config)
    layers = kept_layers(list(layers), student.config.num_hidden_layers)
    attention = [i for i in layers if student.config.layer_types[i] != "linear_attention"]
    if attention:
        raise ValueError(f"layers {attention} of the student are already attention: restore linear layers only")
    types = teacher_attention_types(teacher.config, family)
    config = student.config.to_dict()
    config["mixer_types"] = [types[i] if i in layers else m for i, m in enumerate(student.config.mixer_types)]
    config["layer_types"] = [types[i] if i in layers else t for i, t in enumerate(student.config.layer_types)]
    parameter = next(student.parameters())
    restored = MemLMForCausalLM(MemLMConfig.from_dict(config)).to(device=parameter.device, dtype=parameter.dtype)
    state = {n: t for n, t in student.state_dict().items()
             if not any(n.startswith(f"model.layers.{i}.mixer.") for i in layers)}
    bounds = "model.forget_lower_bounds.lower_bounds"
    if bounds in state:
        hgrn2 = student.config.layers_of_mixer("hgrn2")
        rows = [row for row, i in enumerate(hgrn2) if i not in layers]
        if rows:
            state[bounds] = state[bounds][rows]
        else:
            del state[bounds]
    missing, unexpected = restored.load_state_dict(state, strict=False)
    expected = {n for n, _ in restored.named_parameters() if any(n.startswith(f"model.layers.{i}.mixer.")
                                                                  for i in layers)}
    if unexpected or set(missing) - expected - {"lm_head.weight"}:
        raise ValueError(f"restore_attention: the student's weights do not fit the restored model (missing "
                         f"{sorted(set(missing) - expected)}, unexpected {unexpected})")
    for i in layers:
        copy_attention(teacher, restored, i)
    report = getattr(student, "distill_init_report", None)
    if report is not None:
        restored.distill_init_report = dataclasses.replace(
            report, kept=sorted([*report.kept, *layers]), replaced=[i for i in report.replaced if i not in layers],
            copied={i: v for i, v in report.copied.items() if i not in layers},
            default_init={i: v for i, v in report.default_init.items() if i not in layers},
            not_used={i: v for i, v in report.not_used.items() if i not in layers},
        )
    return restored


def _teacher_layer_names(i: int) -> dict[str, str]:
    """memlm's name -> the teacher's, for layer ``i``'s norms and MLP."""
    names = {f"{n}.weight": f"{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")}
    names.update({f"mlp.{p}_proj.weight": f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")})
    return {f"model.layers.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in names.items()}


@torch.no_grad()
def copy_teacher(teacher: PreTrainedModel, student: MemLMForCausalLM, family: TeacherFamily,
                 report: InitReport) -> None:
    """Copy the teacher's weights into ``student`` (built by :func:`student_config`), filling ``report``."""
    source = teacher.state_dict()
    names = {"model.embed_tokens.weight": "model.embed_tokens.weight", "model.norm.weight": "model.norm.weight"}
    if not student.config.tie_word_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(student.config.num_hidden_layers):
        names.update(_teacher_layer_names(i))
    target = student.state_dict()
    for ours, theirs in names.items():
        target[ours].copy_(source[theirs])
    for i in report.kept:
        copy_attention(teacher, student, i)
    for i in report.replaced:
        init_mixer_from_attention(source, student, i, report)


@torch.no_grad()
def copy_attention(teacher: PreTrainedModel, student: MemLMForCausalLM, layer: int) -> None:
    """Copy the teacher's attention of ``layer`` exactly into the student's attention mixer of that layer
    (projections, their biases, q/k norms; a bias the teacher lacks but memlm's layer has, Qwen2's ``o_proj``,
    is zero)."""
    source = {n: t for n, t in teacher.state_dict().items() if n.startswith(f"model.layers.{layer}.self_attn.")}
    for name, parameter in student.model.layers[layer].mixer.named_parameters():
        theirs = f"model.layers.{layer}.self_attn.{name}"
        if theirs in source:
            parameter.copy_(source[theirs])
        elif name.endswith(".bias"):
            parameter.zero_()
        else:
            raise ValueError(f"the teacher has no {theirs} for the student's attention parameter {name}")


def expanded_projections(source: dict[str, torch.Tensor], layer: int, num_heads: int) -> dict[str, torch.Tensor]:
    """The attention's ``q``, ``k``, ``v``, ``o`` weights of ``layer``, ``k``/``v`` expanded from the key/value
    heads to the ``num_heads`` query heads: ``[Hkv * D, hidden] -> [H * D, hidden]``, head ``h`` <- ``h // (H /
    Hkv)``."""
    prefix = f"model.layers.{layer}.self_attn."
    q, o = source[prefix + "q_proj.weight"], source[prefix + "o_proj.weight"]
    head_dim = q.shape[0] // num_heads
    projections = {"q": q, "o": o}
    for name in "kv":
        weight = source[f"{prefix}{name}_proj.weight"]
        groups = num_heads // (weight.shape[0] // head_dim)
        projections[name] = weight.view(-1, head_dim, weight.shape[1]).repeat_interleave(groups, 0).flatten(0, 1)
    return projections


def mixer_blocks(mixer: str, module: nn.Module, name: str, parameter: nn.Parameter) -> list[int]:
    """The rows of each block of ``MIXER_COPIES[mixer][name]`` in ``module`` (a ``mixer``): GatedDeltaNet's
    ``in_proj_qkv`` is ``[key, key, value]`` (its ``key_dim``, ``value_dim``), Mamba-2's ``in_proj`` ``[inner,
    inner, G N, G N, heads]`` (gate, x, B, C, time steps), any other parameter one block."""
    if mixer == "gated_deltanet" and name == "in_proj_qkv.weight":
        return [module.key_dim, module.key_dim, module.value_dim]
    if mixer == "mamba2" and name == "in_proj.weight":
        state = module.n_groups * module.d_state
        return [module.inner, module.inner, state, state, module.num_heads]
    return [parameter.shape[0]]


@torch.no_grad()
def init_mixer_from_attention(source: dict[str, torch.Tensor], student: MemLMForCausalLM, layer: int,
                              report: InitReport) -> None:
    """Initialize the linear mixer of ``layer`` from the teacher's attention there (``MIXER_COPIES``), block by
    block: a block whose teacher tensor has the block's shape is copied, any other keeps its default. Records in
    ``report`` what was copied (``{parameter: "[block; ...]"}``), what kept its default and which teacher tensors
    of the layer were not used."""
    mixer = student.config.mixer_types[layer]
    module = student.model.layers[layer].mixer
    projections = expanded_projections(source, layer, student.config.num_attention_heads)
    plan = MIXER_COPIES.get(mixer, {})
    copied, defaults, used = {}, [], set()
    for name, parameter in module.named_parameters():
        blocks = plan.get(name, ())
        sizes = mixer_blocks(mixer, module, name, parameter) if blocks else []
        parts, offset = [], 0
        for block, rows in zip(blocks, sizes, strict=True):
            weight = projections.get(block)
            if weight is not None and weight.shape == (rows, parameter.shape[1]):
                parameter[offset:offset + rows].copy_(weight)
                used.add(block)
                parts.append(_describe(block, source, layer, weight))
            else:
                parts.append("default" if weight is None else f"default ({block}: shape {tuple(weight.shape)} does "
                             f"not fit {rows} rows x {parameter.shape[1]})")
            offset += rows
        if any(not p.startswith("default") for p in parts):
            copied[name] = "[" + "; ".join(parts) + "]"
        else:
            defaults.append(name if not parts else f"{name} {parts}")
    prefix = f"model.layers.{layer}.self_attn."
    report.copied[layer], report.default_init[layer] = copied, defaults
    report.not_used[layer] = [n[len(prefix):] for n in source if n.startswith(prefix)
                              and n[len(prefix):] not in {f"{b}_proj.weight" for b in used}]


def _describe(block: str, source: dict[str, torch.Tensor], layer: int, weight: torch.Tensor) -> str:
    """``"q"``, or ``"k expanded"`` for a key/value projection expanded to the query heads."""
    original = source[f"model.layers.{layer}.self_attn.{block}_proj.weight"]
    return block if original.shape == weight.shape else f"{block} expanded"
