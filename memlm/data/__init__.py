"""Data sources: MQAR and passkey retrieval as ``(input_ids, labels)`` tensors with transformers-style labels;
NIAH, document recall and few-shot in-context-learning examples as text; the public recall suite (SWDE, FDA,
SQuAD, ...) as recall examples."""

from memlm.data.documents import RecallExample, document_recall, load_based_recall
from memlm.data.icl import ICLExample, associative_recall_text, label_remapping
from memlm.data.mqar import mqar, mqar_mixture
from memlm.data.needle import NeedleExample, niah, niah_grid, niah_score
from memlm.data.passkey import passkey

__all__ = [
    "ICLExample",
    "NeedleExample",
    "RecallExample",
    "associative_recall_text",
    "document_recall",
    "label_remapping",
    "load_based_recall",
    "mqar",
    "mqar_mixture",
    "niah",
    "niah_grid",
    "niah_score",
    "passkey",
]
