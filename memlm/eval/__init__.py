"""Evaluation metrics for memlm models."""

from memlm.eval.recall import mqar_accuracy

__all__ = ["mqar_accuracy"]
