"""Data sources: synthetic tasks as ``(input_ids, labels)`` tensors with transformers-style labels."""

from memlm.data.mqar import mqar

__all__ = ["mqar"]
