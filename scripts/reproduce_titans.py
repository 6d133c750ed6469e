"""Titans at tiny scale on a CPU: passkey retrieval trained at short length, tested at up to 16x that length.

Trains one model per architecture with everything but the layer pattern (and, for the ablations, one
memory switch) identical: width, depth, steps, learning rate, data, seed. Architectures: all-attention,
a 3:1 GatedDeltaNet hybrid, and the Titans variants LMM (memory layers only), MAL (memory, then
sliding-window attention), MAG (memory-gated sliding-window attention) and MAC (memory as context of
segment attention), plus MAL without momentum and MAL without forgetting. Each model is trained on
passkey rows of ``--train-len`` tokens (:func:`memlm.data.passkey`, recipe source ``passkey``) and then
scored on held-out rows of every ``--test-lens`` length (exact match of the whole key)::

    python scripts/reproduce_titans.py --train-len 256 --test-lens 256,1024,2048,4096,8192 --steps 600 \\
        --out docs/results/titans_reproduction/titans_reproduction.md \\
        --figure docs/results/titans_reproduction/titans_passkey.png --threads 1

``--quick`` runs a tiny smoke grid and writes under /tmp unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ARCHITECTURES = {
    "attention": {"layer_types": ["full_attention"] * 4},
    "GDN 3:1 hybrid": {"hybrid_ratio": "3:1"},
    "LMM": {"layer_types": ["memory"] * 4},
    "MAL": {"layer_types": ["memory", "sliding_attention"] * 2},
    "MAG": {"layer_types": ["memory_as_gate"] * 4},
    "MAC": {"layer_types": ["memory_as_context"] * 4},
    "MAL no momentum": {"layer_types": ["memory", "sliding_attention"] * 2, "memory_rule": {"algorithm": "gd"}},
    "MAL no forgetting": {"layer_types": ["memory", "sliding_attention"] * 2,
                           "memory_rule": {"forgetting": False}},
}


def parse_args(argv=None) -> argparse.Namespace:
    from harness.runs import add_run_arguments, finish_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES),
                        help=f"comma-separated subset of: {', '.join(ARCHITECTURES)}")
    parser.add_argument("--train-len", type=int, default=256)
    parser.add_argument("--test-lens", default="256,1024,2048,4096,8192")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=32, help="sliding window of MAL/MAG attention")
    parser.add_argument("--chunk", type=int, default=32, help="memory chunk (and MAC segment) size")
    parser.add_argument("--key-length", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=64)
    parser.add_argument("--num-examples", type=int, default=8000, help="training rows")
    parser.add_argument("--eval-examples", type=int, default=32, help="test rows per length")
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "docs/results/titans_reproduction/titans_reproduction.md",
                      "docs/results/titans_reproduction/titans_passkey.png", jobs=False)
    args = parser.parse_args(argv)
    finish_run_arguments(args, argv, "/tmp/titans_quick")
    if args.quick:
        args.architectures, args.train_len, args.test_lens, args.steps = "attention,MAL,MAC", 64, "64,128", 3
        args.num_examples, args.eval_examples, args.batch_size = 32, 4, 4
    args.architectures = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = [a for a in args.architectures if a not in ARCHITECTURES]
    if unknown:
        parser.error(f"--architectures: {unknown} unknown; allowed: {list(ARCHITECTURES)}")
    args.test_lens = [int(n) for n in str(args.test_lens).split(",")]
    return args


def recipe(args, name: str, output_dir: str) -> dict:
    """The passkey recipe with this run's sizes; only the layer pattern (and the ablation switch) varies."""
    model = {
        "hidden_size": args.hidden_size, "intermediate_size": 2 * args.hidden_size, "num_hidden_layers": 4,
        "num_attention_heads": args.heads, "sliding_window": args.window, "memory_chunk_size": args.chunk,
        "max_position_embeddings": max(args.test_lens), **ARCHITECTURES[name],
    }
    task = {"num_examples": args.num_examples, "vocab_size": args.vocab_size, "key_length": args.key_length}
    from harness.recipes import synthetic_task_recipe

    return synthetic_task_recipe(output_dir, model, "passkey", task, args.train_len, args.steps, args.batch_size,
                                 args.lr, args.seed, args.eval_examples)


def length_sweep(model, args) -> dict[int, float]:
    """Exact-match passkey accuracy at every test length (held-out seed, needles at uniform depths)."""
    from memlm.data import passkey
    from memlm.eval import row_exact_match

    scores = {}
    for length in args.test_lens:
        ids, labels = passkey(args.eval_examples, length, vocab_size=args.vocab_size, key_length=args.key_length,
                              seed=10_000 + length)
        scores[length] = row_exact_match(model, ids, labels, batch_size=max(1, 8192 // length))
    return scores


def markdown_table(args, results: dict) -> str:
    lines = ["| architecture | " + " | ".join(f"{n} tokens" for n in args.test_lens) + " | train s |",
             "|" + "---|" * (len(args.test_lens) + 2)]
    for name in args.architectures:
        if name in results:
            row = results[name]
            lines.append(f"| {name} | " + " | ".join(f"{row['scores'][n]:.2f}" for n in args.test_lens)
                         + f" | {row['seconds']:.0f} |")
    return "\n".join(lines)


def plot(args, results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.runs import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name in args.architectures:
        if name in results:
            dashed = " no " in name
            ax.plot(args.test_lens, [results[name]["scores"][n] for n in args.test_lens], marker="o",
                    linestyle="--" if dashed else "-", label=name)
    ax.axvline(args.train_len, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.test_lens, [str(n) for n in args.test_lens])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("test length (tokens); grey line: training length")
    ax.set_ylabel("passkey exact match")
    ax.set_title(f"passkey, trained at {args.train_len} tokens, d={args.hidden_size}, 4 layers, {args.steps} steps",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def write_report(args, results: dict, command: str, total_seconds: float) -> None:
    import os

    from harness.runs import machine_description

    figure = os.path.relpath(args.figure, Path(args.out).parent)
    text = f"""# Titans reproduction at tiny scale (generated)

Command (from the repository root):

```
{command}
```

Setup: passkey retrieval ({args.key_length}-digit key after a marker, in a haystack of one repeated filler
sentence; exact match of the whole key), trained on {args.num_examples} rows of {args.train_len} tokens,
{args.steps} steps of batch {args.batch_size}, AdamW lr {args.lr} cosine, seed {args.seed}; hidden
{args.hidden_size}, 4 layers, {args.heads} heads, sliding window {args.window}, memory chunk / MAC segment
{args.chunk}, Titans memory preset (depth-2 MLP, momentum, forgetting). Tested on {args.eval_examples}
held-out rows per length.

Machine: {machine_description()}. Total wall time {total_seconds / 60:.1f} min.

{markdown_table(args, results)}

![passkey exact match against test length]({figure})
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"args": {k: v for k, v in vars(args).items()}, "results": results}, indent=1, default=str))


def main(argv=None) -> dict:
    args = parse_args(argv)
    from harness.runs import script_command

    command = script_command(__file__, argv)
    import torch
    from tqdm import tqdm

    from memlm.training import train
    from memlm.training.config import config_from_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="titans_repro_", dir="/tmp"))
    results: dict = {}
    start = time.perf_counter()
    for name in tqdm(args.architectures, desc="architectures", file=sys.stderr):
        out = workdir / name.replace(" ", "_").replace(":", "to")
        t0 = time.perf_counter()
        result = train(config_from_dict(recipe(args, name, str(out))))
        seconds = time.perf_counter() - t0
        results[name] = {"scores": length_sweep(result.model, args), "seconds": seconds}
        tqdm.write(f"{name:20s} " + "  ".join(f"{n}:{s:.2f}" for n, s in results[name]["scores"].items())
                   + f"  ({seconds:.0f}s)", file=sys.stdout)
        sys.stdout.flush()
        write_report(args, results, command, time.perf_counter() - start)  # partial results stay on disk
        plot(args, results, args.figure)
    print(markdown_table(args, results))
    print(f"total {(time.perf_counter() - start) / 60:.1f} min; wrote {args.out} and {args.figure}")
    return results


if __name__ == "__main__":
    main()
