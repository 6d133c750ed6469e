"""Which layers keep softmax attention: KL-guided layer selection (arXiv 2512.20569, fla-org/hybrid-distillation).

The paper's selector (their "GA-S2") measures each layer's marginal utility in an all-linear student that has been
through stage 1: restore **exactly one** layer ``l`` to the teacher's softmax attention, run stage 2, and rank the
layers by the distillation objective reached (lower is better); the ``K`` best are kept::

    KL(l) = E_tokens KL( p_teacher || p_student with layer l restored )
    keep  = the num_keep layers with the smallest KL(l)

:func:`select_attention_layers` implements that ranking. Restoring a layer is
:func:`~memlm.distill.student.restore_attention` (the teacher's attention copied exactly, the stage-1 mixers
elsewhere). By default the KL is measured right after the restoration, without training the candidate (the
cheap proxy: one forward pass per candidate and batch); pass ``finetune`` to train each candidate first (a short
stage 2, as the paper does with ~200M tokens per candidate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from memlm.distill.losses import distillation_loss
from memlm.distill.student import restore_attention
from memlm.models.modeling_memlm import MemLMForCausalLM


@dataclasses.dataclass
class Selection:
    """The result of :func:`select_attention_layers`.

    Attributes:
        layers: the kept layers, sorted.
        kl: ``{layer: KL}``, the student's KL to the teacher (nats per token) with only that layer restored.
        ranking: every layer, the most useful (smallest KL) first.
        baseline_kl: the KL of the all-linear student itself.
    """

    layers: list[int]
    kl: dict[int, float]
    ranking: list[int]
    baseline_kl: float

    def as_dict(self) -> dict:
        """A JSON-ready copy (for a run's summary)."""
        return dataclasses.asdict(self)


def _rows(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(input_ids, attention_mask)`` of a batch: a ``[B, T]`` tensor, an ``(ids, mask)`` pair or a dict with
    ``input_ids`` (and ``attention_mask``)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        return batch["input_ids"], batch.get("attention_mask")
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be a [batch, seq_len] tensor of ids, an (input_ids, attention_mask) pair or a "
                     f"dict with input_ids, got {type(batch).__name__}")


@torch.no_grad()
def kl_to_teacher(teacher: PreTrainedModel, student: MemLMForCausalLM, batches: list) -> float:
    """The token-weighted mean over ``batches`` of KL(teacher || student) (:func:`distillation_loss`, temperature
    1) at the non-padding tokens."""
    total, tokens = 0.0, 0
    for batch in batches:
        ids, mask = _rows(batch)
        count = ids.numel() if mask is None else int(mask.sum())
        kl = distillation_loss(student(ids, attention_mask=mask, use_cache=False).logits,
                               teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits, mask)
        total, tokens = total + kl.item() * count, tokens + count
    return total / tokens


def select_attention_layers(
    teacher: PreTrainedModel,
    student: MemLMForCausalLM,
    batches: Iterable,
    num_keep: int,
    finetune: Callable[[MemLMForCausalLM], None] | None = None,
    progress: bool = True,
) -> Selection:
    """The ``num_keep`` layers whose restoration to the teacher's attention lowers the student's KL most.

    Args:
        teacher: the teacher ``student`` was built from (:func:`~memlm.distill.hybrid_from_teacher`), in eval
            mode (its logits are recomputed for each candidate: (L + 1) teacher and student forward passes per
            batch, and one candidate model at a time besides ``student``).
        student: the all-linear student after stage 1 (every layer replaced).
        batches: the held-out data the KL is measured on: ``[B, T]`` id tensors, ``(input_ids, attention_mask)``
            pairs or dicts with ``input_ids`` / ``attention_mask`` (read once per candidate).
        num_keep: how many layers keep attention, in ``[0, num_hidden_layers]``.
        finetune: called on each candidate (the student with one layer restored, a new model) before its KL is
            measured, e.g. a short stage 2; None measures right after the restoration.
        progress: show a progress bar over the candidates.

    Returns:
        :class:`Selection`. Neither model is changed (the candidates are copies).

    Raises:
        ValueError: before any work: ``num_keep`` out of range, a student with an attention layer, no batch.
    """
    num_layers = student.config.num_hidden_layers
    if isinstance(num_keep, bool) or not isinstance(num_keep, int) or not 0 <= num_keep <= num_layers:
        raise ValueError(f"num_keep={num_keep!r} is not allowed: an integer in [0, {num_layers}]")
    attention = [i for i, t in enumerate(student.config.layer_types) if t != "linear_attention"]
    if attention:
        raise ValueError(f"the student's layers {attention} are attention: selection starts from a student whose "
                         "every layer is replaced (hybrid_from_teacher(teacher, keep_attention=[]) after stage 1)")
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: give at least one batch to measure the KL on")
    for batch in batches:
        _rows(batch)
    was_training = student.training
    student.eval()
    baseline = kl_to_teacher(teacher, student, batches)
    kl = {}
    for layer in tqdm(range(num_layers), desc="restore one layer", disable=not progress):
        candidate = restore_attention(teacher, student, [layer])
        if finetune is not None:
            finetune(candidate)
        kl[layer] = kl_to_teacher(teacher, candidate.eval(), batches)
        del candidate
    student.train(was_training)
    ranking = sorted(kl, key=lambda layer: (kl[layer], layer))
    return Selection(layers=sorted(ranking[:num_keep]), kl=kl, ranking=ranking, baseline_kl=baseline)
