"""Datasets and scores of memlm's lm-eval tasks, generated offline by memlm's generators (no hub download).

lm-evaluation-harness 0.4.13 calls a task's ``custom_dataset`` as ``fn(**metadata, **dataset_kwargs)`` and
uses the ``test`` split of what it returns. The metadata is the task YAML's ``metadata`` (``version``), the
run's ``--metadata`` JSON (or ``TaskManager(metadata=...)``) and, through ``lm-eval run`` or
``simple_evaluate(model_args=...)``, the model arguments (``pretrained``, ...); so every dataset function takes
``**kwargs``, reads the keys below and ignores the others. The same keys apply to every task of a run:

* ``num_examples``: examples per task (default 100); for ``memlm_niah``, per (context length, depth) cell
  (default 16, so 96 examples over the default 2 x 3 grid);
* ``seed``: seed of the generators (default 1234, as ``scripts/run_eval.py``);
* ``num_attributes``: attributes per document of the document-recall tasks (default 6);
* ``num_shots``: shots of the few-shot tasks (default 8);
* ``context_lengths`` and ``depths``: the NIAH grid (default ``[200, 400]`` words and ``[0.0, 0.5, 1.0]``),
  as JSON lists or comma-separated strings. The lengths are counted in whitespace-separated words, since the
  model's tokenizer is not available to a dataset function.

A doc holds ``prompt`` (the model's input, ``doc_to_text``), ``target`` (the first gold answer, for the logs)
and ``answers`` (all gold answers), plus ``context_length`` and ``depth`` for NIAH.
"""

from __future__ import annotations

from typing import Any

import datasets

from memlm.data import associative_recall_text, document_recall, label_remapping, niah_grid, niah_score
from memlm.eval import contains_any, exact_match, first_line

DEFAULT_NUM_EXAMPLES = 100
DEFAULT_NIAH_EXAMPLES_PER_CELL = 16
DEFAULT_SEED = 1234
DEFAULT_NUM_ATTRIBUTES = 6
DEFAULT_NUM_SHOTS = 8
DEFAULT_CONTEXT_LENGTHS = (200, 400)
DEFAULT_DEPTHS = (0.0, 0.5, 1.0)


def _int(kwargs: dict[str, Any], name: str, default: int) -> int:
    value = kwargs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        raise ValueError(f"metadata {name!r} must be a non-negative int, got {value!r}")
    return int(value)


def _numbers(kwargs: dict[str, Any], name: str, default: tuple, kind: type) -> list:
    value = kwargs.get(name, default)
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    try:
        return [kind(part) for part in value]
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata {name!r} must be a list of {kind.__name__} values, got {value!r}") from error


def _splits(rows: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _doc_recall(kwargs: dict[str, Any], twice: bool) -> datasets.DatasetDict:
    examples = document_recall(
        _int(kwargs, "num_examples", DEFAULT_NUM_EXAMPLES),
        num_attributes=_int(kwargs, "num_attributes", DEFAULT_NUM_ATTRIBUTES),
        seed=_int(kwargs, "seed", DEFAULT_SEED),
    )
    return _splits(
        [
            {"prompt": e.jrt_prompt() if twice else e.prompt, "target": e.answers[0], "answers": e.answers}
            for e in examples
        ]
    )


def doc_recall(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_doc_recall``: :func:`memlm.data.document_recall` with its plain prompt ``doc + " " + key + ":"``."""
    return _doc_recall(kwargs, twice=False)


def doc_recall_twice(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_doc_recall_twice``: the same documents as ``memlm_doc_recall`` with JRT-Prompt (read twice)."""
    return _doc_recall(kwargs, twice=True)


def _niah(kwargs: dict[str, Any], twice: bool) -> datasets.DatasetDict:
    lengths = _numbers(kwargs, "context_lengths", DEFAULT_CONTEXT_LENGTHS, int)
    depths = _numbers(kwargs, "depths", DEFAULT_DEPTHS, float)
    per_cell = _int(kwargs, "num_examples", DEFAULT_NIAH_EXAMPLES_PER_CELL)
    examples = niah_grid(lengths, depths, per_cell, seed=_int(kwargs, "seed", DEFAULT_SEED), variant="single")
    cells = [examples[start : start + per_cell] for start in range(0, len(examples), per_cell)]
    return _splits(
        [
            {
                "prompt": e.jrt_prompt() if twice else e.prompt,
                "target": e.answers[0],
                "answers": e.answers,
                "context_length": e.context_length,
                "depth": e.depth,
            }
            for i in range(per_cell)
            for e in (cell[i] for cell in cells)
        ]
    )


def niah(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_niah``: single-needle :func:`memlm.data.niah_grid` over word-counted lengths and depths.

    The cells are interleaved (example 0 of every cell, then example 1, ...), so that ``--limit`` keeps every
    cell of the grid.
    """
    return _niah(kwargs, twice=False)


def niah_twice(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_niah_twice``: the same needles as ``memlm_niah`` with JRT-Prompt (``NeedleExample.jrt_prompt``)."""
    return _niah(kwargs, twice=True)


def _icl(build, kwargs: dict[str, Any]) -> datasets.DatasetDict:
    examples = build(
        _int(kwargs, "num_examples", DEFAULT_NUM_EXAMPLES),
        _int(kwargs, "num_shots", DEFAULT_NUM_SHOTS),
        seed=_int(kwargs, "seed", DEFAULT_SEED),
    )
    return _splits([{"prompt": e.prompt, "target": e.answer, "answers": [e.answer]} for e in examples])


def icl_label_remapping(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_icl_label_remapping``: :func:`memlm.data.label_remapping`, ``num_shots`` shots, 2 classes."""
    return _icl(label_remapping, kwargs)


def icl_associative_recall(**kwargs: Any) -> datasets.DatasetDict:
    """``memlm_icl_associative_recall``: :func:`memlm.data.associative_recall_text`, ``num_shots`` shots."""
    return _icl(associative_recall_text, kwargs)


def process_contains(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``contains``: 1 when the first generated line contains a gold answer, ignoring case (JRT's score)."""
    return {"contains": contains_any(first_line(results[0]), doc["answers"])}


def process_niah(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``niah_score``: the fraction of the gold values in the generation, ignoring case (RULER's)."""
    return {"niah_score": niah_score(results[0], doc["answers"])}


def process_exact_match(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``exact_match``: 1 when the first generated line, stripped, is the answer (case included)."""
    return {"exact_match": exact_match(first_line(results[0]), doc["target"])}
