"""Stage 2 of distillation: the student's next-token distributions matched to the teacher's."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
) -> torch.Tensor:
    r"""Knowledge-distillation loss of a causal LM (Hinton et al. 2015), computed in fp32.

    At every position ``t`` with ``attention_mask[b, t] = 1``, with ``p = softmax(teacher / tau)``,
    ``q = softmax(student / tau)`` over the vocabulary::

        KL_t = sum_v p_v (log p_v - log q_v)
        loss = tau^2 * mean_t KL_t  +  ce_weight * CE

    ``tau^2`` keeps the gradient's scale independent of the temperature. ``CE`` is the next-token cross entropy
    of the student as transformers computes it for ``labels`` (unshifted: logits at ``t`` predict
    ``labels[:, t + 1]``), averaged over the targets that are not -100 and where both ``t`` and ``t + 1`` are
    tokens, not padding (a padding position's logits predict nothing).

    Args:
        student_logits, teacher_logits: ``[B, T, V]``.
        attention_mask: ``[B, T]``, 1 = token, 0 = padding (None: every position counts).
        labels: ``[B, T]`` token ids, -100 ignored; needed when ``ce_weight > 0``.
        temperature: ``tau > 0``.
        ce_weight: weight ``>= 0`` of the next-token loss.

    Returns:
        A scalar tensor (differentiable in ``student_logits``).

    Raises:
        ValueError: naming the argument: shapes that differ or are not ``[B, T, V]``, a mask or labels not
            ``[B, T]``, ``temperature <= 0``, ``ce_weight < 0``, ``ce_weight > 0`` without labels, no token to
            average over.
    """
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must both be [batch, seq_len, vocab]")
    for name, tensor in (("attention_mask", attention_mask), ("labels", labels)):
        if tensor is not None and tensor.shape != student_logits.shape[:2]:
            raise ValueError(f"{name} must be [batch, seq_len] = {list(student_logits.shape[:2])}, got "
                             f"{list(tensor.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} is not allowed: a number > 0")
    if not ce_weight >= 0:
        raise ValueError(f"ce_weight={ce_weight!r} is not allowed: a number >= 0")
    if ce_weight > 0 and labels is None:
        raise ValueError(f"ce_weight={ce_weight} needs labels (the next-token loss's targets)")
    keep = (torch.ones(student_logits.shape[:2], dtype=torch.bool, device=student_logits.device)
            if attention_mask is None else attention_mask.bool())
    if not bool(keep.any()):
        raise ValueError("attention_mask has no token (all 0): nothing to average over")
    log_q = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)  # [N, V]
    log_p = F.log_softmax(teacher_logits[keep].float() / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    if ce_weight == 0:
        return kl
    targets = labels[:, 1:].masked_fill(~(keep[:, :-1] & keep[:, 1:]), -100)  # a token predicted from a token
    ce = F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100)
    return kl + ce_weight * ce
