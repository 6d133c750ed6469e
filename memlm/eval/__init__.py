"""Evaluation metrics for memlm models: MQAR accuracy and the scores of generated answers."""

from memlm.eval.recall import mqar_accuracy, row_exact_match
from memlm.eval.scoring import contains_any, exact_match, first_line

__all__ = ["contains_any", "exact_match", "first_line", "mqar_accuracy", "row_exact_match"]
