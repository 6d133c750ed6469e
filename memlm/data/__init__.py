"""Data sources: MQAR as ``(input_ids, labels)`` tensors with transformers-style labels, NIAH examples as text."""

from memlm.data.mqar import mqar
from memlm.data.needle import NeedleExample, niah, niah_grid, niah_score

__all__ = ["NeedleExample", "mqar", "niah", "niah_grid", "niah_score"]
