"""Distilling a pretrained Transformer into a memlm hybrid (docs/guides/distill.md).

* :func:`hybrid_from_teacher` (:mod:`memlm.distill.student`): the student, with the teacher's weights.
* :mod:`memlm.distill.alignment`: stage 1, each new mixer trained alone to reproduce its attention's output.
* :func:`distillation_loss` (:mod:`memlm.distill.losses`): stage 2, KL(teacher || student) of the next-token
  distributions (+ optional next-token loss).
* :func:`select_attention_layers` (:mod:`memlm.distill.selection`): which layers keep attention, by KL.
* The recipe (``recipes/distill.py``): :func:`load_config` (a YAML recipe and dotted overrides, checked:
  :class:`DistillConfig`, :mod:`memlm.distill.config`) and :func:`distill` (both stages on Accelerate, with
  checkpoints and exact resume: a :class:`DistillResult`, :mod:`memlm.distill.run`).
"""

from memlm.distill.alignment import alignment_loss, attention_io, mixer_parameters
from memlm.distill.config import DistillConfig, load_config
from memlm.distill.losses import distillation_loss
from memlm.distill.run import DistillResult, distill
from memlm.distill.selection import Selection, select_attention_layers
from memlm.distill.student import SUPPORTED_TEACHERS, InitReport, hybrid_from_teacher, restore_attention

__all__ = [
    "SUPPORTED_TEACHERS", "DistillConfig", "DistillResult", "InitReport", "alignment_loss", "attention_io", "distill",
    "distillation_loss", "hybrid_from_teacher", "load_config", "mixer_parameters", "restore_attention",
    "select_attention_layers", "Selection",
]
