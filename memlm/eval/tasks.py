"""Evaluation tasks for ``scripts/run_eval.py``: each turns a model and tokenizer into scored records.

A task is ``run(model, tokenizer, options) -> list[record]`` (records as in :mod:`memlm.eval.report`),
registered in :data:`TASKS` under its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from memlm.eval.generation import greedy_answers


@dataclass
class EvalOptions:
    """Shared settings of the tasks (the command-line flags of ``scripts/run_eval.py``)."""

    num_examples: int = 50
    context_lengths: list[int] = field(default_factory=lambda: [256, 512, 1024])
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    batch_size: int = 8
    max_new_tokens: int = 48
    seed: int = 1234
    mqar_seq_len: int = 64
    mqar_num_kv_pairs: int = 8
    mqar_vocab_size: int | None = None
    mqar_jrt: bool = False
    num_shots: int = 8
    doc_num_attributes: int = 6
    niah_jrt: bool = False
    progress: bool = True


def run_mqar(model, tokenizer, options: EvalOptions) -> list[dict]:
    """Zoology's MQAR on token ids: argmax accuracy at the query positions, one record per example. With
    ``options.mqar_jrt`` the same rows are also read with their key-value block twice (variant ``"{n}kv jrt"``,
    :func:`memlm.data.mqar` ``context_repeats=2``)."""
    from memlm.data import mqar
    from memlm.eval.recall import mqar_accuracy

    if options.mqar_vocab_size is None:
        raise ValueError("task 'mqar' needs --mqar-vocab-size: the key/value vocabulary the model was trained on")
    variants = {f"{options.mqar_num_kv_pairs}kv": 1}
    if options.mqar_jrt:
        variants[f"{options.mqar_num_kv_pairs}kv jrt"] = 2
    records = []
    for variant, repeats in variants.items():
        input_ids, labels = mqar(options.num_examples, options.mqar_seq_len, options.mqar_num_kv_pairs,
                                 options.mqar_vocab_size, seed=options.seed, context_repeats=repeats)
        records += [{"task": "mqar", "variant": variant, "context_length": options.mqar_seq_len, "depth": None,
                     "score": mqar_accuracy(model, input_ids[i : i + 1], labels[i : i + 1])}
                    for i in range(len(input_ids))]
    return records


def _answers_by_variant(model, tokenizer, examples, options: EvalOptions, with_jrt: bool,
                        stop_at_newline: bool = True) -> list[tuple[str, object, str]]:
    """``(variant, example, output)`` for each example's plain prompt (variant ``"plain"``) and, with
    ``with_jrt``, its JRT-Prompt (``"jrt"``, ``example.jrt_prompt()``): greedy, batched with left padding."""
    variants = {"plain": [e.prompt for e in examples]}
    if with_jrt:
        variants["jrt"] = [e.jrt_prompt() for e in examples]
    answers = []
    for variant, prompts in variants.items():
        outputs = greedy_answers(model, tokenizer, prompts, options.max_new_tokens, options.batch_size,
                                 stop_at_newline=stop_at_newline, progress=options.progress)
        answers += [(variant, e, out) for e, out in zip(examples, outputs, strict=True)]
    return answers


def run_niah(model, tokenizer, options: EvalOptions) -> list[dict]:
    """RULER-style single needle over a grid of context lengths and depths; score = answers found. With
    ``options.niah_jrt`` every needle is also asked with JRT-Prompt (variant ``"jrt"``: the context read twice,
    the question first)."""
    from memlm.data import niah_grid, niah_score

    examples = niah_grid(options.context_lengths, options.depths, options.num_examples, seed=options.seed,
                         tokenizer=tokenizer)
    return [{"task": "niah", "variant": variant, "context_length": e.context_length, "depth": e.depth,
             "score": niah_score(out, e.answers)}
            for variant, e, out in _answers_by_variant(model, tokenizer, examples, options, options.niah_jrt,
                                                       stop_at_newline=False)]


def run_doc_recall(model, tokenizer, options: EvalOptions) -> list[dict]:
    """Attribute recall from generated SWDE/FDA-style documents, plain and with JRT-Prompt (context read
    twice); greedy up to ``max_new_tokens`` stopped at a newline, scored by "contains" as the JRT suite. Each
    record also keeps the asked ``attribute``, the gold ``answers`` and the model's ``output`` (error analysis)."""
    from memlm.data import document_recall
    from memlm.eval.scoring import contains_any

    examples = document_recall(options.num_examples, num_attributes=options.doc_num_attributes, seed=options.seed)
    return [{"task": "doc_recall", "variant": variant, "context_length": None, "depth": None,
             "score": contains_any(out, e.answers), "attribute": e.key, "answers": list(e.answers), "output": out}
            for variant, e, out in _answers_by_variant(model, tokenizer, examples, options, with_jrt=True)]


def _run_icl(task: str, build) -> Callable[..., list[dict]]:
    """A few-shot task scored by exact match of the first generated line."""

    def run(model, tokenizer, options: EvalOptions) -> list[dict]:
        from memlm.eval.scoring import exact_match

        examples = build(options.num_examples, options.num_shots, seed=options.seed)
        outputs = greedy_answers(model, tokenizer, [e.prompt for e in examples], options.max_new_tokens,
                                 options.batch_size, progress=options.progress)
        return [{"task": task, "variant": f"{options.num_shots}-shot", "context_length": None, "depth": None,
                 "score": exact_match(out, e.answer)} for e, out in zip(examples, outputs, strict=True)]

    run.__doc__ = f"{task}: few-shot, exact match of the first generated line."
    return run


def _icl_tasks() -> dict[str, Callable[..., list[dict]]]:
    from memlm.data import associative_recall_text, label_remapping

    return {"icl_label_remapping": _run_icl("icl_label_remapping", label_remapping),
            "icl_associative_recall": _run_icl("icl_associative_recall", associative_recall_text)}


TASKS: dict[str, Callable[..., list[dict]]] = {
    "mqar": run_mqar, "niah": run_niah, "doc_recall": run_doc_recall, **_icl_tasks()
}


def run_tasks(model, tokenizer, names: list[str], options: EvalOptions) -> list[dict]:
    """Run the named tasks; unknown names raise before any work."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; available: {sorted(TASKS)}")
    return [record for name in names for record in TASKS[name](model, tokenizer, options)]
