"""JRT-Prompt at tiny scale: does reading the document twice raise a recurrent model's document recall?

Trains small language models (byte-level, or with a BPE trained on the documents: ``--tokenizer bpe``) that
differ only in their mixers (all-GDN, all-attention, optionally the 3:1 hybrid, Based and JRT-RNN:
:mod:`harness.architectures`) on generated SWDE/FDA-style documents
(:func:`memlm.data.document_recall`), each followed by its question and answer, with the loss on the answer
only (recipe ``data.completion_field``). Half of the training documents are written with the plain prompt
and half with JRT-Prompt, so both formats are in distribution. Each model then answers held-out documents
(other seed) with both prompts: greedy generation up to 48 tokens stopped at a newline, scored by "contains"
as the JRT recall suite does
(``scripts/run_eval.py --tasks doc_recall``)::

    python scripts/reproduce_jrt_prompt.py --steps 3000 \\
        --out docs/results/jrt_prompt_reproduction/jrt_prompt_reproduction.md \\
        --figure docs/results/jrt_prompt_reproduction/jrt_prompt.png

JRT (arXiv 2407.05483) predicts: the recurrent model gains from the second read (it knows what to keep
when it reads the document again, the question being shown first), attention gains little.
``--quick`` runs a tiny smoke version and writes under /tmp unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

VARIANTS = ("plain", "jrt")
LOSS_DESCRIPTIONS = {"answer": "what follows the prompt only", "all": "every token"}
LOSS_FIELDS = {"answer": {"text_field": "prompt", "completion_field": "answer"}, "all": {"text_field": "text"}}


def parse_args(argv=None) -> argparse.Namespace:
    from harness.runs import add_run_arguments, finish_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="all-GDN,attention",
                        help="comma-separated names of ARCHITECTURES in scripts/harness/architectures.py")
    parser.add_argument("--tokenizer", choices=("byte", "bpe"), default="byte",
                        help="byte-level, or a byte-level BPE trained on the generated training documents")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (with --tokenizer bpe)")
    parser.add_argument("--loss", choices=("answer", "all"), default="answer",
                        help="train on the answer tokens only, or on every token (the JRT copy teaches copying)")
    parser.add_argument("--questions", type=int, default=1,
                        help="questions per training document: the prompt's, then this many minus one about other "
                             "attributes of the same document, one per line with its answer (evaluation asks one)")
    parser.add_argument("--window", type=int, default=64, help="sliding window of Based and JRT-RNN, in tokens")
    parser.add_argument("--num-attributes", type=int, default=8, help="attributes per document")
    parser.add_argument("--num-train", type=int, default=40000, help="training documents (half plain, half JRT)")
    parser.add_argument("--seq-len", type=int, default=1024, help="packed training rows, in tokens")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--eval-examples", type=int, default=500, help="held-out documents, each asked both ways")
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "docs/results/jrt_prompt_reproduction/jrt_prompt_reproduction.md",
                      "docs/results/jrt_prompt_reproduction/jrt_prompt.png")
    args = parser.parse_args(argv)
    finish_run_arguments(args, argv, "/tmp/jrt_quick")
    if args.quick:
        args.num_attributes, args.num_train, args.seq_len, args.steps = 3, 64, 256, 3
        args.hidden_size, args.layers, args.heads, args.eval_examples, args.batch_size = 32, 4, 2, 4, 4
    from harness.architectures import parse_architectures

    try:
        args.architectures = parse_architectures(args.architectures)
    except ValueError as error:
        parser.error(f"--architectures: {error}")
    from memlm.data.documents import MAX_ATTRIBUTES

    if not 1 <= args.num_attributes <= MAX_ATTRIBUTES:
        parser.error(f"--num-attributes must be in 1..{MAX_ATTRIBUTES}, got {args.num_attributes}")
    if not 1 <= args.questions <= args.num_attributes:
        parser.error(f"--questions must be in 1..--num-attributes ({args.num_attributes}), got {args.questions}")
    return args


def write_training_documents(args: argparse.Namespace, path: Path) -> list[str]:
    """JSON lines ``{"prompt": ..., "answer": ..., "text": prompt + answer}``, even rows with the plain prompt,
    odd rows with JRT's. ``answer`` is ``" " + value``, then ``args.questions - 1`` further lines
    ``"\n{attribute}: {value}"`` about other attributes of the document, in random order. Returns the texts."""
    import random

    from memlm.data import document_recall

    examples = document_recall(args.num_train, num_attributes=args.num_attributes, seed=args.seed)
    order = random.Random(args.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, example in enumerate(examples):
        others = [line.split(": ", 1) for line in example.context.split("\n")[1:]]
        others = [pair for pair in others if pair[0] != example.key]
        more = "".join(f"\n{key}: {value}" for key, value in order.sample(others, args.questions - 1))
        prompt, answer = example.prompt if i % 2 == 0 else example.jrt_prompt(), f" {example.answers[0]}{more}"
        rows.append({"prompt": prompt, "answer": answer, "text": prompt + answer})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [row["text"] for row in rows]


def tokenizer_section(args: argparse.Namespace, texts: list[str], workdir: Path) -> dict:
    """The recipe's ``tokenizer`` section: byte-level, or a BPE trained here on the training texts and saved
    under ``workdir`` (the held-out documents are tokenized with it too)."""
    if args.tokenizer == "byte":
        return {"kind": "byte"}
    from memlm.tokenization import train_bpe_tokenizer

    path = workdir / "bpe_tokenizer"
    train_bpe_tokenizer(None, args.vocab_size, texts=texts).save_pretrained(path)
    return {"kind": "pretrained", "path": str(path)}


def recipe(args: argparse.Namespace, name: str, data_file: Path, tokenizer: dict, output_dir: Path) -> dict:
    """A text recipe; only the mixers differ between the architectures."""
    from harness.architectures import model_section

    return {
        "output_dir": str(output_dir),
        "model": model_section(name, args.hidden_size, args.layers, args.heads, 4 * args.seq_len, args.window),
        "tokenizer": tokenizer,
        "data": {"source": "json", "files": [str(data_file)], "seq_len": args.seq_len, **LOSS_FIELDS[args.loss]},
        "optimizer": {"lr": args.lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": min(100, max(1, args.steps // 10)), "min_lr_ratio": 0.05},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                  "log_every": max(1, args.steps // 10), "max_minutes": args.max_minutes},
        "checkpoint": {"every": 0, "keep": 1},
        "logging": {"trackers": []},
    }


def train_and_score(raw_recipe: dict, num_examples: int, num_attributes: int, threads: int | None) -> dict:
    """Train one model, then score held-out document recall with both prompts (in this process or a worker)."""
    import torch
    from transformers import AutoTokenizer

    from memlm.eval.tasks import EvalOptions, run_doc_recall
    from memlm.training import train
    from memlm.training.config import config_from_dict

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    result = train(config_from_dict(raw_recipe))
    train_seconds = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(raw_recipe["output_dir"])
    options = EvalOptions(num_examples=num_examples, doc_num_attributes=num_attributes, batch_size=16,
                          progress=False)
    records = run_doc_recall(result.model.eval(), tokenizer, options)
    scores = {v: sum(r["score"] for r in records if r["variant"] == v) / num_examples for v in VARIANTS}
    return {**scores, "steps": result.summary["steps"], "final_loss": result.summary["final_loss"],
            "train_seconds": train_seconds}


def markdown_table(results: dict) -> str:
    rows = ["| architecture | plain prompt | JRT-Prompt | JRT - plain | steps | final loss | train s |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['plain']:.3f} | {r['jrt']:.3f} | {r['jrt'] - r['plain']:+.3f} | {r['steps']} | "
                    f"{r['final_loss']:.3f} | {r['train_seconds']:.0f} |")
    return "\n".join(rows)


def plot(args, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.runs import save_figure

    names = list(results)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names)), 3.8))
    width = 0.38
    for offset, variant in zip((-width / 2, width / 2), VARIANTS, strict=True):
        ax.bar([i + offset for i in range(len(names))], [results[n][variant] for n in names], width,
               label="JRT-Prompt" if variant == "jrt" else "plain prompt")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("document recall (contains)")
    ax.set_title(f"{args.num_attributes} attributes/document, d={args.hidden_size}, {args.layers} layers, "
                 f"{args.steps} steps", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    save_figure(fig, path)


def more_questions(args: argparse.Namespace) -> str:
    if args.questions == 1:
        return ""
    return f" and {args.questions - 1} more questions about the same document, one per line, each with its answer"


def tokenizer_description(args: argparse.Namespace) -> str:
    if args.tokenizer == "byte":
        return "byte-level"
    return f"BPE ({args.vocab_size} ids, trained on the training documents)"


def write_report(args, results: dict, command: str, machine: str, total_seconds: float) -> None:
    figure_rel = os.path.relpath(args.figure, Path(args.out).parent)
    text = f"""# JRT-Prompt document recall at tiny scale (generated)

Command (from the repository root):

```
{command}
```

Setup: {tokenizer_description(args)} models, hidden {args.hidden_size}, intermediate
{2 * args.hidden_size}, {args.layers} layers, {args.heads} heads; {args.num_train} generated training documents
of {args.num_attributes} attributes (half with the plain prompt, half with JRT-Prompt, each followed by its
answer{more_questions(args)}; loss on {LOSS_DESCRIPTIONS[args.loss]}), packed into rows of {args.seq_len} tokens;
{args.steps} steps of batch {args.batch_size}, AdamW lr {args.lr:g} (weight decay 0.1), cosine schedule, seed
{args.seed}. Test: {args.eval_examples} held-out documents (seed 1234), each asked with both prompts, greedy
generation up to 48 tokens stopped at a newline, "contains" scoring. Only the mixers differ
(`scripts/harness/architectures.py`; Based and JRT-RNN with a sliding window of {args.window} tokens).

Machine: {machine}. Total wall time {total_seconds / 60:.1f} min ({args.jobs} runs at a time).

{markdown_table(results)}

![document recall, plain prompt vs JRT-Prompt]({figure_rel})
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=2))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from harness.architectures import directory_name
    from harness.grid import run_grid
    from harness.runs import machine_description, script_command

    command = script_command(__file__, argv)
    machine = machine_description()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="jrt_repro_", dir="/tmp"))
    data_file = workdir / "train_documents.jsonl"
    tokenizer = tokenizer_section(args, write_training_documents(args, data_file), workdir)
    jobs = {name: (recipe(args, name, data_file, tokenizer, workdir / directory_name(name)),
                   args.eval_examples, args.num_attributes, args.threads) for name in args.architectures}
    results: dict = {}
    start = time.perf_counter()

    def record(name: str, result: dict) -> None:
        results[name] = result
        print(f"{name:11s} plain={result['plain']:.3f}  jrt={result['jrt']:.3f}  steps={result['steps']}  "
              f"{result['train_seconds']:.0f}s", flush=True)
        ordered = {n: results[n] for n in args.architectures if n in results}
        write_report(args, ordered, command, machine, time.perf_counter() - start)
        plot(args, ordered, args.figure)

    run_grid(train_and_score, jobs, args.jobs, record)
    print(markdown_table({n: results[n] for n in args.architectures}))
    print(f"total {(time.perf_counter() - start) / 60:.1f} min; wrote {args.out} and {args.figure}")
    return results


if __name__ == "__main__":
    main()
