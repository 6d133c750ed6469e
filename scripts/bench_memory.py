"""Benchmark memlm's neural memory against titans-pytorch's ``NeuralMemory`` (forward + backward, CPU).

Both run the same memory: one MLP per head of depth ``--depth`` and hidden width ``--expansion`` x head
dim with a residual LayerNorm (titans-pytorch's default memory model), l2 loss, momentum and weight
decay, chunks of ``--chunk`` tokens. Each (implementation, length) runs in a fresh subprocess so that
peak memory (``ru_maxrss`` above the process's footprint just before the first forward) is its own::

    pip install titans-pytorch==0.5.5          # benchmark-only dependency
    python scripts/bench_memory.py --lengths 1024,2048,4096,8192,16384 --threads 1 \\
        --json docs/figures/bench_memory.json --figure docs/figures/bench_memory.png

Prints tokens/s and peak MB per length for both, and memlm's speed and memory ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--expansion", type=float, default=4.0, help="memory MLP hidden width / head dim")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward passes (best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["memlm", "titans-pytorch"], default=None)
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--figure", default=None, help="PNG of tokens/s and peak memory against length")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(impl: str, args):
    if impl == "memlm":
        from memlm.layers.neural_memory import NeuralMemory, memory_rule

        rule = memory_rule("titans", {"depth": args.depth, "expansion": args.expansion, "residual": True})
        module = NeuralMemory(args.dim, args.heads, args.chunk, args.dim // args.heads, rule)
        return lambda x: module(x)[0]
    from titans_pytorch import MemoryMLP, NeuralMemory

    model = MemoryMLP(args.dim // args.heads, depth=args.depth, expansion_factor=args.expansion)
    module = NeuralMemory(args.dim, chunk_size=args.chunk, heads=args.heads, dim_head=args.dim // args.heads,
                          model=model)
    return lambda x: module(x)[0]


def worker(impl: str, length: int, args) -> dict:
    """One measurement in this process: the best of ``repeats`` timed passes after one warm-up."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    forward = build(impl, args)
    x = torch.randn(args.batch, length, args.dim, requires_grad=True)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        out = forward(x)
        out.float().square().mean().backward()
        best = min(best, time.perf_counter() - start)
        x.grad = None
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{impl}: non-finite output at length {length}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "length": length, "tokens_per_s": args.batch * length / best,
            "seconds": best, "peak_mb": (peak_kb - base_kb) / 1024}


def measure(impl: str, length: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", impl, str(length)] + [
        f"--{name}={getattr(args, name)}" for name in ("dim", "heads", "chunk", "depth", "expansion", "batch",
                                                       "repeats", "threads")
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"impl": impl, "length": length, "error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    for impl, marker in (("memlm", "o"), ("titans-pytorch", "s")):
        rows = [r for r in results if r["impl"] == impl and "error" not in r]
        lengths = [r["length"] for r in rows]
        speed.plot(lengths, [r["tokens_per_s"] for r in rows], marker=marker, label=impl)
        memory.plot(lengths, [r["peak_mb"] for r in rows], marker=marker, label=impl)
    for ax, label in ((speed, "tokens/s (fwd+bwd)"), (memory, "peak MB above baseline")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    memory.set_yscale("log")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return []
    from tqdm import tqdm

    impls = [args.only] if args.only else ["memlm", "titans-pytorch"]
    lengths = [int(n) for n in args.lengths.split(",")]
    results = []
    for length in tqdm(lengths, desc="lengths", file=sys.stderr):
        for impl in impls:
            results.append(measure(impl, length, args))
    print(f"dim {args.dim}, heads {args.heads}, chunk {args.chunk}, depth {args.depth}, expansion {args.expansion}, "
          f"batch {args.batch}, {args.threads} thread(s), forward+backward")
    print(f"{'T':>6} | {'memlm tok/s':>11} | {'titans tok/s':>12} | {'speed x':>7} | {'memlm MB':>8} | "
          f"{'titans MB':>9} | {'memory x':>8}")
    by = {(r["impl"], r["length"]): r for r in results}
    for length in lengths:
        ours, theirs = by.get(("memlm", length), {}), by.get(("titans-pytorch", length), {})

        def cell(row, key, fmt):
            return format(row[key], fmt) if key in row else row.get("error", "-")[:12]

        ratio = (f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}"
                 if "tokens_per_s" in ours and "tokens_per_s" in theirs else "-")
        mem_ratio = (f"{ours['peak_mb'] / theirs['peak_mb']:.2f}"
                     if "peak_mb" in ours and "peak_mb" in theirs and theirs["peak_mb"] > 0 else "-")
        print(f"{length:>6} | {cell(ours, 'tokens_per_s', '11.0f')} | {cell(theirs, 'tokens_per_s', '12.0f')} | "
              f"{ratio:>7} | {cell(ours, 'peak_mb', '8.0f')} | {cell(theirs, 'peak_mb', '9.0f')} | {mem_ratio:>8}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if args.figure:
        plot(results, args.figure)
    print(f"measured {len(results)} runs")
    return results


if __name__ == "__main__":
    main()
