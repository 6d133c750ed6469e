"""JRT-RNN's training objective (arXiv 2407.05483, section 4): a prefix read non-causally cannot be trained
with next-token prediction (each prefix position sees the token it would predict), so

    loss = NTP(suffix) + w * MLM(prefix),      w = 0.25                                      (1)

NTP(suffix): mean cross-entropy of the next token at every target that lies after the prefix (position
``t - 1`` predicts token ``t`` for ``t >= prefix_length``); MLM(prefix): a fraction (15%) of the prefix
tokens is replaced by a mask token in the input, and the logits at those positions predict the original
tokens (no shift). ``mask_prefix_tokens`` draws the corruption; ``prefix_lm_loss`` computes (1).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def prompt_lengths(labels: torch.Tensor) -> torch.Tensor:
    """``[B]``: the positions before the first target of each row of ``labels`` ``[B, T]`` (-100: no target), so
    that the prompt of a labelled row (an MQAR context) is its prefix; T for a row without targets."""
    has_target = labels != -100
    first = has_target.float().argmax(-1)  # the first True (0 when there is none)
    return torch.where(has_target.any(-1), first, torch.full_like(first, labels.shape[1]))


def mask_prefix_tokens(
    input_ids: torch.Tensor,
    prefix_mask: torch.Tensor,
    probability: float,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each prefix token by ``mask_token_id`` with ``probability``.

    Args:
        input_ids: ``[B, T]``.
        prefix_mask: ``[B, T]`` bool, True at the prefix tokens (padding excluded).

    Returns:
        ``(masked input_ids [B, T], mlm_labels [B, T])``: the labels hold the original token at the masked
        positions and -100 elsewhere.
    """
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = prefix_mask & (draw < probability)
    mlm_labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    return torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids), mlm_labels


def prefix_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    prefix_mask: torch.Tensor,
    mlm_labels: torch.Tensor | None,
    mlm_weight: float,
) -> torch.Tensor:
    """Equation (1).

    Args:
        logits: ``[B, T, vocab]``.
        labels: ``[B, T]`` next-token labels as for any causal LM (-100: no loss); the targets inside the
            prefix are ignored here.
        prefix_mask: ``[B, T]`` bool, True at the prefix tokens.
        mlm_labels: ``[B, T]``, the original tokens at the masked prefix positions and -100 elsewhere (None:
            no masked-token term).
    """
    targets = labels.masked_fill(prefix_mask, -100)[:, 1:]  # a target inside the prefix is read, not predicted
    vocab = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=-100)
    if mlm_labels is not None and mlm_weight > 0 and bool((mlm_labels != -100).any()):
        mlm = F.cross_entropy(logits.reshape(-1, vocab).float(), mlm_labels.reshape(-1), ignore_index=-100)
        loss = loss + mlm_weight * mlm
    return loss
