"""Reproduce the MQAR recall ordering (attention >= 3:1 GatedDeltaNet hybrid > all-GDN) at tiny scale on a CPU.

Trains one model per (architecture, number of key-value pairs) with everything but
``model.config.hybrid_ratio`` identical (width, layers, steps, learning rate, data, seeds), evaluates MQAR
accuracy on held-out rows, and writes a markdown table and a plot::

    python scripts/reproduce_mqar.py --kv-pairs 16,64 --seq-len 128 --steps 300 \\
        --out docs/mqar_reproduction.md --figure docs/figures/mqar_ordering.png

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

ARCHITECTURES = [("attention", "0:1"), ("3:1 hybrid", "3:1"), ("all-GDN", "1:0")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kv-pairs", default="16,32,64", help="comma-separated numbers of key-value pairs")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: max(seq_len, 128)")
    parser.add_argument("--num-examples", type=int, default=20000, help="training rows per run")
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default="docs/mqar_reproduction.md")
    parser.add_argument("--figure", default="docs/figures/mqar_ordering.png")
    parser.add_argument("--workdir", default=None, help="run directories (default: a fresh folder under /tmp)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (outputs under /tmp by default)")
    args = parser.parse_args(argv)
    if args.quick:
        args.kv_pairs, args.seq_len, args.steps = "4,8", 64, 5
        args.hidden_size, args.layers, args.num_examples, args.eval_examples = 32, 4, 256, 64
        if "--out" not in (argv if argv is not None else sys.argv):
            args.out = "/tmp/mqar_quick/mqar_reproduction.md"
        if "--figure" not in (argv if argv is not None else sys.argv):
            args.figure = "/tmp/mqar_quick/mqar_ordering.png"
    args.kv_pairs = [int(k) for k in str(args.kv_pairs).split(",") if k.strip()]
    args.vocab_size = args.vocab_size or max(args.seq_len, 128)
    return args


def recipe(args: argparse.Namespace, ratio: str, kv_pairs: int, output_dir: str) -> dict:
    """The recipe of ``recipes/configs/mqar_hybrid_tiny.yaml`` with this run's sizes; only the ratio varies."""
    model = {
        "hidden_size": args.hidden_size,
        "intermediate_size": 2 * args.hidden_size,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "hybrid_ratio": ratio,
        "linear_attn_type": "gated_deltanet",
        "max_position_embeddings": max(256, args.seq_len),
    }
    task = {"num_examples": args.num_examples, "num_kv_pairs": kv_pairs, "vocab_size": args.vocab_size}
    from memlm.training.config import synthetic_task_recipe

    return synthetic_task_recipe(output_dir, model, "mqar", task, args.seq_len, args.steps, args.batch_size,
                                 args.lr, args.seed, args.eval_examples)


def markdown_table(args, results: dict) -> str:
    names = [name for name, _ in ARCHITECTURES]
    head = "| kv pairs | " + " | ".join(f"{n} acc" for n in names) + " | " + \
        " | ".join(f"{n} train s" for n in names) + " |"
    rule = "|" + "---|" * (1 + 2 * len(names))
    rows = [head, rule]
    for kv in args.kv_pairs:
        accs = [f"{results[(n, kv)]['acc']:.3f}" if (n, kv) in results else "—" for n in names]
        secs = [f"{results[(n, kv)]['seconds']:.0f}" if (n, kv) in results else "—" for n in names]
        rows.append(f"| {kv} | " + " | ".join(accs) + " | " + " | ".join(secs) + " |")
    return "\n".join(rows)


def plot(args, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (name, _), marker in zip(ARCHITECTURES, "os^", strict=True):
        kvs = [kv for kv in args.kv_pairs if (name, kv) in results]
        ax.plot(kvs, [results[(name, kv)]["acc"] for kv in kvs], marker=marker, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.kv_pairs, [str(k) for k in args.kv_pairs])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("key-value pairs")
    ax.set_ylabel("MQAR accuracy")
    ax.set_title(f"MQAR, seq_len {args.seq_len}, d={args.hidden_size}, {args.layers} layers, {args.steps} steps",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(args, results: dict, command: str, total_seconds: float) -> None:
    from memlm.eval.report import machine_description

    names = [name for name, _ in ARCHITECTURES]
    figure_rel = os.path.relpath(args.figure, Path(args.out).parent)
    text = f"""# MQAR reproduction at tiny scale (generated)

Command (from the repository root):

```
{command}
```

Setup: hidden {args.hidden_size}, intermediate {2 * args.hidden_size}, {args.layers} layers, {args.heads} heads,
seq_len {args.seq_len}, vocab {args.vocab_size}, {args.num_examples} training rows, {args.steps} steps of
batch {args.batch_size}, AdamW lr {args.lr} cosine, seed {args.seed}; MQAR accuracy on {args.eval_examples}
held-out rows. Only `model.config.hybrid_ratio` differs: attention "0:1", hybrid "3:1", all-GDN "1:0".

Machine: {machine_description()}. Total wall time {total_seconds / 60:.1f} min.

{markdown_table(args, results)}

![MQAR accuracy vs key-value pairs]({figure_rel})

Columns: {", ".join(names)} accuracy, then each run's training seconds.
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from memlm.eval.report import script_command

    command = script_command(__file__, argv)
    import torch
    from tqdm import tqdm

    from memlm.training import train
    from memlm.training.config import config_from_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mqar_repro_", dir="/tmp"))
    grid = [(kv, name, ratio) for kv in args.kv_pairs for name, ratio in ARCHITECTURES]
    results: dict = {}
    start = time.perf_counter()
    bar = tqdm(grid, desc="runs", file=sys.stderr)
    for kv, name, ratio in bar:
        bar.set_postfix_str(f"{name}, {kv} pairs")
        out = workdir / f"kv{kv}_{ratio.replace(':', 'to')}"
        t0 = time.perf_counter()
        result = train(config_from_dict(recipe(args, ratio, kv, str(out))))
        seconds = time.perf_counter() - t0
        results[(name, kv)] = {"acc": float(result.summary["eval"]["mqar_accuracy"]), "seconds": seconds}
        tqdm.write(f"kv={kv:3d}  {name:11s} ratio={ratio}  acc={results[(name, kv)]['acc']:.3f}  "
                   f"{seconds:.0f}s", file=sys.stdout)
        sys.stdout.flush()
        # keep partial results on disk as the grid goes
        write_report(args, results, command, time.perf_counter() - start)
        plot(args, results, args.figure)
    total = time.perf_counter() - start
    write_report(args, results, command, total)
    plot(args, results, args.figure)
    print(markdown_table(args, results))
    print(f"total {total / 60:.1f} min; wrote {args.out} and {args.figure}")
    return results


if __name__ == "__main__":
    main()
