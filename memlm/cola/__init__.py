"""CoLa: test-time chains of layers (skip, repeat, reorder) of any Llama-style decoder, found by MCTS."""

from memlm.cola.chain import chain, check_path, relabel
from memlm.cola.rewards import GeneratedAnswerReward, PrefixForward, TeacherForcedReward, greedy_answer
from memlm.cola.search import SearchResult, mcts

__all__ = [
    "GeneratedAnswerReward",
    "PrefixForward",
    "SearchResult",
    "TeacherForcedReward",
    "chain",
    "check_path",
    "greedy_answer",
    "mcts",
    "relabel",
]
