"""Recall accuracy of a causal LM on labelled synthetic rows such as :func:`memlm.data.mqar`'s.

Labels follow transformers' convention: ``labels[:, t]`` is the target of the prediction made at
``t - 1``, and -100 marks unscored positions. The accuracy is

    acc = #{(b, t) : labels[b, t] != -100 and argmax logits[b, t - 1] == labels[b, t]}
          / #{(b, t) : labels[b, t] != -100}

over all rows at once (every labelled position weighs the same). A model with JRT-RNN's prefix layers reads
each row's prompt (the positions before its first label: an MQAR context) as its prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from memlm.data.mqar import IGNORE_INDEX
from memlm.models.jrt_rnn import prompt_lengths


@torch.no_grad()
def mqar_accuracy(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
    """Fraction of labelled positions whose next-token argmax is the label.

    The model runs in eval mode (each module's training flag is restored afterwards) on the device of its
    first parameter (the inputs' device for a model without parameters), ``batch_size`` rows at a time, as
    ``model(input_ids=..., use_cache=False).logits``.

    Args:
        model: a causal LM whose output has ``logits`` ``[B, T, vocab]``.
        input_ids: ``[N, T]`` token ids.
        labels: ``[N, T]`` targets, -100 where unscored; position 0 cannot be scored (nothing predicts it).
        batch_size: rows per forward pass.

    Returns:
        The accuracy in [0, 1].

    Raises:
        ValueError: for ``input_ids`` and ``labels`` of different or non-2-D shapes, a ``batch_size`` that
            is not a positive int, a label at position 0, or no label at all.
    """
    check_labelled_rows(input_ids, labels, batch_size)
    total = int((labels != IGNORE_INDEX).sum())
    if total == 0:
        raise ValueError("labels has no labelled position (all are -100), so the accuracy is undefined")

    hits = label_hits(model, input_ids, labels, batch_size)
    return int(hits.sum()) / total


def row_exact_match(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int = 64) -> float:
    """Fraction of rows whose every labelled position is predicted right (passkey: the whole key).

    Same arguments, checks and evaluation mode as :func:`mqar_accuracy`; every row needs a label.
    """
    check_labelled_rows(input_ids, labels, batch_size)
    if bool(((labels != IGNORE_INDEX).sum(-1) == 0).any()):
        raise ValueError("every row needs a labelled position for a row exact match")
    hits = label_hits(model, input_ids, labels, batch_size)
    scored = labels[:, 1:] != IGNORE_INDEX
    return int((hits | ~scored.to(hits.device)).all(-1).sum()) / input_ids.shape[0]


def check_labelled_rows(input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    """The argument checks shared by the accuracies (see :func:`mqar_accuracy`'s Raises)."""
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and labels must both be [N, T], got {tuple(input_ids.shape)} and {tuple(labels.shape)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if (labels[:, 0] != IGNORE_INDEX).any():
        raise ValueError("labels[:, 0] must be -100: with the transformers shift no logit predicts position 0")
    if not bool((labels != IGNORE_INDEX).any()):
        raise ValueError("labels has no labelled position (all are -100), so the accuracy is undefined")


@torch.no_grad()
def label_hits(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``[N, T - 1]`` bool: the argmax at ``t - 1`` equals ``labels[:, t]`` (False where unlabelled)."""
    parameter = next(model.parameters(), None)
    device = input_ids.device if parameter is None else parameter.device
    modes = [(module, module.training) for module in model.modules()]
    reads_prefix = bool(getattr(model, "reads_prefix", False))
    model.eval()
    try:
        hits = []
        for start in range(0, input_ids.shape[0], batch_size):
            batch_labels = labels[start : start + batch_size].to(device)
            prefix = {"prefix_length": prompt_lengths(batch_labels)} if reads_prefix else {}
            logits = model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False,
                           **prefix).logits
            hits.append(logits[:, :-1].argmax(-1) == batch_labels[:, 1:])  # an argmax is never -100
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(hits)
