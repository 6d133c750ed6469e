"""Prompt builders for recall evaluation: the plain prompt and JRT-Prompt ("just read twice", arXiv 2407.05483).

A recall prompt is a context followed by a question or an attribute cue, which the model continues with the
answer. :func:`plain_prompt` writes ``context + " " + question_or_cue``. JRT-Prompt repeats the context, so
that a recurrent model reads it once already knowing what will be asked: :func:`jrt_prompt` writes a lead,
then ``repeats`` copies of the context joined by ``separator``, then the question and its answer cue::

    lead + " " + separator.join([context] * repeats) + " " + question + answer_cue

The lead is ``header``, or the question itself when ``header`` is None; an empty ``header`` writes no lead
(and no space after it). With ``repeats=1`` there is no lead, whatever ``header`` is, and the result is the
plain prompt ``context + " " + question + answer_cue``: the lead belongs to the repetition.

The two formats of the paper (HazyResearch's ``based_*_twice`` lm-eval tasks) are, for a document and a
queried attribute (SWDE, FDA)::

    jrt_prompt("Name: Ada. Born: 1815.", "Born", answer_cue=":", header="Information about Born.")
    == "Information about Born. Name: Ada. Born: 1815.\\nName: Ada. Born: 1815. Born:"

whose plain counterpart (``repeats=1``) is ``"Name: Ada. Born: 1815. Born:"``, and for a passage and a
question (SQuAD, TriviaQA, NQ, Drop)::

    jrt_prompt("Ada was born in 1815.", "When was Ada born?")
    == "When was Ada born? Ada was born in 1815.\\nAda was born in 1815. When was Ada born?"

The strings are joined exactly as written: nothing is stripped or added.
"""

from __future__ import annotations


def _check_text(name: str, value: object) -> None:
    """Raise a ValueError unless ``value`` is a non-empty str."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")


def plain_prompt(context: str, question_or_cue: str) -> str:
    """``context + " " + question_or_cue``: the context read once, then what is asked.

    Args:
        context: the document or passage.
        question_or_cue: the question, or the attribute cue such as ``"Born:"``.

    Raises:
        ValueError: for a ``context`` or ``question_or_cue`` that is not a non-empty str.
    """
    _check_text("context", context)
    _check_text("question_or_cue", question_or_cue)
    return f"{context} {question_or_cue}"


def jrt_prompt(
    context: str,
    question: str,
    repeats: int = 2,
    answer_cue: str = "",
    header: str | None = None,
    separator: str = "\n",
) -> str:
    """JRT-Prompt: a lead, ``repeats`` copies of ``context``, then the question (see the module notes).

    Args:
        context: the document or passage.
        question: the question, or the queried attribute (with ``answer_cue=":"``); it ends the prompt and,
            when ``header`` is None, also leads it.
        repeats: copies of ``context``; 1 gives :func:`plain_prompt` of ``question + answer_cue``.
        answer_cue: text right after the final ``question``, such as ``":"``.
        header: the lead before the first copy, such as ``"Information about Born."``; None leads with
            ``question``, ``""`` writes no lead. Unused when ``repeats == 1``.
        separator: what joins the copies.

    Returns:
        ``lead + " " + separator.join([context] * repeats) + " " + question + answer_cue``, without
        ``lead + " "`` for an empty lead or ``repeats == 1``.

    Raises:
        ValueError: for a ``context`` or ``question`` that is not a non-empty str, a ``repeats`` that is not a
            positive int, or an ``answer_cue``, ``header`` or ``separator`` of the wrong type.
    """
    _check_text("context", context)
    _check_text("question", question)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats <= 0:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if not isinstance(answer_cue, str):
        raise ValueError(f"answer_cue must be a str, got {answer_cue!r}")
    if header is not None and not isinstance(header, str):
        raise ValueError(f"header must be a str or None, got {header!r}")
    if not isinstance(separator, str):
        raise ValueError(f"separator must be a str, got {separator!r}")
    body = plain_prompt(separator.join([context] * repeats), question + answer_cue)
    lead = question if header is None else header
    return f"{lead} {body}" if repeats > 1 and lead else body
