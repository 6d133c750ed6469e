"""Scores of generated answers, as the recall suite of JRT (arXiv 2407.05483) and memlm's few-shot tasks use them.

The suite generates greedily, at most 48 tokens, and stops at the first newline (lm-eval's
``until=["\\n"]``, which drops the newline): :func:`first_line` cuts a longer generation the same way. Then:

* the recall tasks (SWDE, FDA, SQuAD, TriviaQA, NQ, Drop and :func:`memlm.data.document_recall`) score 1 when
  any gold answer occurs in the generation, ignoring case, else 0 (:func:`contains_any`, HazyResearch's
  ``contains_score``): ``contains_any(" 1815, in London", ["1815"]) == 1.0``;
* the few-shot tasks (:mod:`memlm.data.icl`) score 1 when the generation, stripped of surrounding
  whitespace, is the answer, case included, else 0 (:func:`exact_match`):
  ``exact_match(first_line(" foo\\nlion: bar"), "foo") == 1.0`` but ``exact_match(" Foo", "foo") == 0.0``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def first_line(text: str) -> str:
    """``text`` up to its first ``"\\n"``, excluded (all of it when it has none), as the suite's stop string."""
    return text.split("\n", 1)[0]


def contains_any(generation: str, answers: Sequence[str]) -> float:
    """1.0 when some answer occurs in ``generation``, ignoring case, else 0.0 (the JRT recall score).

    Matches as ``re.search(re.escape(answer), generation, re.IGNORECASE)``, like HazyResearch's
    ``contains_score``; so an empty answer is contained in any generation.

    Raises:
        ValueError: for ``answers`` that is a str, or empty.
    """
    if isinstance(answers, str):
        raise ValueError(f"answers must be a sequence of gold answers, not a str: got {answers!r}; wrap it in a list")
    if len(answers) == 0:
        raise ValueError("answers must hold at least one gold answer, got none")
    return float(any(re.search(re.escape(answer), generation, re.IGNORECASE) for answer in answers))


def exact_match(generation: str, answer: str) -> float:
    """1.0 when ``generation.strip() == answer.strip()``, else 0.0: whitespace around them is ignored, case is not.

    Pass the generation through :func:`first_line` first when it may run past the answer's line.
    """
    return float(generation.strip() == answer.strip())
