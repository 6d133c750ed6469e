"""Reproduce the MQAR recall ordering (attention >= 3:1 GatedDeltaNet hybrid > all-GDN) at tiny scale.

Trains one model per (architecture, number of key-value pairs, learning rate) with everything but the
mixers identical (width, layers, steps, data, seeds; see :mod:`harness.architectures`, which also
offers ``Based``, ``JRT-RNN`` and 3:1 hybrids of the other linear mixers, ``3:1 GLA``, ``3:1 DeltaNet``,
``3:1 Mamba-2`` and ``3:1 KDA``, for ``--architectures``), evaluates MQAR accuracy on held-out rows, and writes a
markdown table of the best learning rate per cell (Zoology's protocol: each
architecture at its best learning rate of the sweep), the whole sweep, and a plot::

    python scripts/reproduce_mqar.py --kv-pairs 16,64 --seq-len 128 --steps 300 --lr 1e-3,3e-3 \\
        --out docs/results/mqar_reproduction/mqar_reproduction.md \\
        --figure docs/results/mqar_reproduction/mqar_ordering.png

``--mixture 64:4:20000,128:8:20000,256:16:20000,...`` trains as Zoology does: one model per (architecture,
learning rate) on a mixture of ``seq_len:num_kv_pairs:num_examples`` configurations (short rows first teach the
recall circuit), evaluated at ``--seq-len`` with every ``--kv-pairs``.

``--jobs N`` trains N runs at once in separate processes (on a GPU, many small runs share it well).

``--quick`` runs a tiny smoke grid (a few steps, short rows) and writes under /tmp unless told otherwise.
The training recipe is the one of ``recipes/configs/mqar_hybrid_tiny.yaml`` with the sizes given here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

MARKERS = "os^Dvp*Xh<>"  # cycled: every architecture gets a line


def parse_args(argv=None) -> argparse.Namespace:
    from harness.runs import add_run_arguments, finish_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default="attention,3:1 hybrid,all-GDN",
                        help="comma-separated names of ARCHITECTURES in scripts/harness/architectures.py")
    parser.add_argument("--window", type=int, default=16, help="sliding window of Based and JRT-RNN")
    parser.add_argument("--kv-pairs", default="16,32,64", help="comma-separated numbers of key-value pairs")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", default="1e-3,3e-3", help="comma-separated learning rates swept per cell")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: max(seq_len, 128)")
    parser.add_argument("--num-examples", type=int, default=20000, help="training rows per run")
    parser.add_argument("--mixture", default=None,
                        help="train one model per architecture and lr on these comma-separated "
                             "seq_len:num_kv_pairs:num_examples configs (Zoology's protocol) and evaluate it "
                             "at --seq-len with every --kv-pairs")
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "docs/results/mqar_reproduction/mqar_reproduction.md",
                      "docs/results/mqar_reproduction/mqar_ordering.png")
    args = parser.parse_args(argv)
    finish_run_arguments(args, argv, "/tmp/mqar_quick")
    if args.quick:
        args.kv_pairs, args.seq_len, args.steps = "4,8", 64, 5
        args.hidden_size, args.layers, args.num_examples, args.eval_examples = 32, 4, 256, 64
    args.kv_pairs = [int(k) for k in str(args.kv_pairs).split(",") if k.strip()]
    args.lr = [float(lr) for lr in str(args.lr).split(",") if lr.strip()]
    args.mixture = parse_mixture(parser, args.mixture) if args.mixture else None
    args.vocab_size = args.vocab_size or max(args.seq_len, 128)
    from harness.architectures import parse_architectures

    try:
        args.architectures = parse_architectures(args.architectures)
    except ValueError as error:
        parser.error(f"--architectures: {error}")
    return args


def parse_mixture(parser: argparse.ArgumentParser, text: str) -> list[dict]:
    """``"64:4:20000,256:16:20000"`` -> ``[{"seq_len": 64, "num_kv_pairs": 4, "num_examples": 20000}, ...]``."""
    mixture = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--mixture: {item.strip()!r} is not seq_len:num_kv_pairs:num_examples (positive ints)")
        mixture.append(dict(zip(("seq_len", "num_kv_pairs", "num_examples"), map(int, parts), strict=True)))
    return mixture


def recipe(args: argparse.Namespace, name: str, kv_pairs: int, lr: float, output_dir: str) -> dict:
    """The recipe of ``recipes/configs/mqar_hybrid_tiny.yaml`` with this run's sizes; only the mixers vary."""
    from harness.architectures import model_section
    from harness.recipes import synthetic_task_recipe

    model = model_section(name, args.hidden_size, args.layers, args.heads, max(256, args.seq_len), args.window)
    task = {"num_examples": args.num_examples, "num_kv_pairs": kv_pairs, "vocab_size": args.vocab_size}
    if args.mixture:
        task = {"mixture": args.mixture, "num_kv_pairs": kv_pairs, "vocab_size": args.vocab_size}
    raw = synthetic_task_recipe(output_dir, model["config"], "mqar", task, args.seq_len, args.steps,
                                args.batch_size, lr, args.seed, args.eval_examples)
    raw["model"] = model
    raw["train"]["max_minutes"] = args.max_minutes
    return raw


def best_per_cell(results: dict) -> dict:
    """``{(name, kv): result}`` of the learning rate with the highest accuracy of each cell."""
    best: dict = {}
    for (name, kv, lr), result in results.items():
        if (name, kv) not in best or result["acc"] > best[(name, kv)]["acc"]:
            best[(name, kv)] = {**result, "lr": lr}
    return best


def markdown_table(args, results: dict) -> str:
    """Best accuracy per cell, with its learning rate and training seconds."""
    best = best_per_cell(results)
    names = args.architectures
    rows = ["| kv pairs | " + " | ".join(f"{n} acc (lr)" for n in names) + " |", "|" + "---|" * (1 + len(names))]
    for kv in args.kv_pairs:
        cells = [f"{best[(n, kv)]['acc']:.3f} ({best[(n, kv)]['lr']:g})" if (n, kv) in best else "—" for n in names]
        rows.append(f"| {kv} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def sweep_table(results: dict) -> str:
    """Every run: accuracy, steps done (fewer than asked when ``--max-minutes`` ended it) and seconds."""
    rows = ["| kv pairs | architecture | lr | acc | steps | train s |", "|---|---|---|---|---|---|"]
    for (name, kv, lr), r in sorted(results.items(), key=lambda item: (item[0][1], item[0][0], item[0][2])):
        rows.append(f"| {kv} | {name} | {lr:g} | {r['acc']:.3f} | {r['steps']} | {r['seconds']:.0f} |")
    return "\n".join(rows)


def plot(args, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.runs import save_figure

    best = best_per_cell(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, name in enumerate(args.architectures):
        marker = MARKERS[i % len(MARKERS)]
        kvs = [kv for kv in args.kv_pairs if (name, kv) in best]
        ax.plot(kvs, [best[(name, kv)]["acc"] for kv in kvs], marker=marker, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.kv_pairs, [str(k) for k in args.kv_pairs])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("key-value pairs")
    ax.set_ylabel("MQAR accuracy (best lr)")
    ax.set_title(f"MQAR, seq_len {args.seq_len}, d={args.hidden_size}, {args.layers} layers, {args.steps} steps",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def training_rows(args) -> str:
    if not args.mixture:
        return f"{args.num_examples} training rows"
    parts = ", ".join(f"{m['num_examples']} x ({m['seq_len']} tokens, {m['num_kv_pairs']} pairs)" for m in args.mixture)
    return f"training rows a mixture of {parts} (Zoology's protocol: one model evaluated at every pair count)"


def write_report(args, results: dict, command: str, total_seconds: float, machine: str) -> None:
    figure_rel = os.path.relpath(args.figure, Path(args.out).parent)
    lrs = ", ".join(f"{lr:g}" for lr in args.lr)
    text = f"""# MQAR reproduction at tiny scale (generated)

Command (from the repository root):

```
{command}
```

Setup: hidden {args.hidden_size}, intermediate {2 * args.hidden_size}, {args.layers} layers, {args.heads} heads,
seq_len {args.seq_len}, vocab {args.vocab_size}, {training_rows(args)}, {args.steps} steps of
batch {args.batch_size}, AdamW (weight decay 0.1) with a cosine schedule at each learning rate of [{lrs}],
seed {args.seed}; MQAR accuracy on {args.eval_examples} held-out rows. Only the mixers differ
(`scripts/harness/architectures.py`: attention "0:1", hybrid "3:1", all-GDN "1:0", the other linear mixers "3:1";
Based and JRT-RNN with a sliding window of {args.window} tokens and feature dimension 16).

Machine: {machine}. Total wall time {total_seconds / 60:.1f} min ({args.jobs} runs at a time).

Best learning rate per cell:

{markdown_table(args, results)}

![MQAR accuracy vs key-value pairs]({figure_rel})

Every run:

{sweep_table(results)}
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def train_run(raw_recipe: dict, threads: int | None, kv_pairs: list[int]) -> dict:
    """Train one recipe (in this process or a worker); ``{kv: {acc, steps, seconds}}`` for each of ``kv_pairs``
    (the recipe's own evaluation, then held-out rows of the other pair counts at the same length and seed)."""
    import torch

    from memlm.data import mqar
    from memlm.eval import mqar_accuracy
    from memlm.training import train
    from memlm.training.config import config_from_dict

    if threads:
        torch.set_num_threads(threads)
    config = config_from_dict(raw_recipe)
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    task = config.data.mqar
    accuracies = {task["num_kv_pairs"]: float(result.summary["eval"]["mqar_accuracy"])}
    for kv in kv_pairs:
        if kv not in accuracies:
            rows = mqar(config.eval.num_examples, config.data.seq_len, kv, task["vocab_size"], seed=config.eval.seed)
            accuracies[kv] = mqar_accuracy(result.model, *rows)
    return {kv: {"acc": accuracies[kv], "steps": result.summary["steps"], "seconds": seconds} for kv in kv_pairs}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm import tqdm

    from harness.architectures import directory_name
    from harness.grid import run_grid
    from harness.runs import machine_description, script_command

    command = script_command(__file__, argv)
    machine = machine_description()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mqar_repro_", dir="/tmp"))
    # with a mixture one model per (architecture, lr) answers every pair count; otherwise one model per cell
    trained_kv = args.kv_pairs[:1] if args.mixture else args.kv_pairs
    grid = [(name, kv, lr) for kv in trained_kv for name in args.architectures for lr in args.lr]
    results: dict = {}
    start = time.perf_counter()
    bar = tqdm(total=len(grid), desc="runs", file=sys.stderr)

    def record(name, _trained_kv, lr, per_kv) -> None:
        for kv, result in per_kv.items():
            results[(name, kv, lr)] = result
            tqdm.write(f"kv={kv:3d}  {name:11s} lr={lr:g}  acc={result['acc']:.3f}  steps={result['steps']}  "
                       f"{result['seconds']:.0f}s", file=sys.stdout)
        sys.stdout.flush()
        bar.update(1)
        # keep partial results on disk as the grid goes
        write_report(args, results, command, time.perf_counter() - start, machine)
        plot(args, results, args.figure)

    prefix = "mixture" if args.mixture else "kv"
    jobs = {(name, kv, lr): (recipe(args, name, kv, lr, str(workdir / f"{prefix}{kv}_{directory_name(name)}_lr{lr:g}")),
                             args.threads, args.kv_pairs if args.mixture else [kv])
            for name, kv, lr in grid}
    run_grid(train_run, jobs, args.jobs, lambda key, result: record(*key, result))
    bar.close()
    total = time.perf_counter() - start
    write_report(args, results, command, total, machine)
    plot(args, results, args.figure)
    print(markdown_table(args, results))
    print(f"total {total / 60:.1f} min; wrote {args.out} and {args.figure}")
    return results


if __name__ == "__main__":
    main()
