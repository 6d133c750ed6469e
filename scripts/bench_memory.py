"""Benchmark memlm's neural memory against titans-pytorch's ``NeuralMemory`` (forward + backward, CPU).

Both run the same memory: one MLP per head of depth ``--depth`` and hidden width ``--expansion`` x head
dim with a residual LayerNorm (titans-pytorch's default memory model), l2 loss, momentum and weight
decay, chunks of ``--chunk`` tokens. memlm runs twice: as is, and with ``recompute_chunks`` (only
chunk-boundary states kept for the backward pass). Every measurement runs in a fresh subprocess:

- speed: the best of ``--repeats`` timed forward+backward passes after one warm-up;
- peak memory: one pass in a process whose allocator returns freed memory at once
  (``MALLOC_MMAP_THRESHOLD_=65536``), so the peak resident size above the footprint just before the
  first forward is the peak of live tensors, not what glibc's heap happens to keep cached;
- arithmetic: the floating-point operations of one pass, counted by ``torch.utils.flop_counter`` (matrix
  products; machine-independent), and the rate each implementation reaches (GFLOP x tokens/s / tokens).

::

    pip install titans-pytorch==0.5.5          # benchmark-only dependency
    python scripts/bench_memory.py --lengths 1024,2048,4096,8192,16384 --threads 1 \\
        --json docs/results/benchmarks/bench_memory.json --figure docs/results/benchmarks/bench_memory.png

Prints tokens/s and peak MB per length, and memlm's ratios to titans-pytorch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ["memlm", "memlm-recompute", "titans-pytorch"]


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
    parser.add_argument("--only", choices=IMPLS, default=None)
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--figure", default=None, help="PNG of tokens/s and peak memory against length")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "LENGTH", "MODE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(impl: str, args):
    if impl.startswith("memlm"):
        from memlm.layers.neural_memory import NeuralMemory, memory_rule

        rule = memory_rule("titans", {"depth": args.depth, "expansion": args.expansion, "residual": True})
        module = NeuralMemory(args.dim, args.heads, args.chunk, args.dim // args.heads, rule,
                              recompute_chunks=impl == "memlm-recompute")
        return lambda x: module(x)[0]
    from titans_pytorch import MemoryMLP, NeuralMemory

    model = MemoryMLP(args.dim // args.heads, depth=args.depth, expansion_factor=args.expansion)
    module = NeuralMemory(args.dim, chunk_size=args.chunk, heads=args.heads, dim_head=args.dim // args.heads,
                          model=model)
    return lambda x: module(x)[0]


def worker(impl: str, length: int, mode: str, args) -> dict:
    """One measurement in this process: ``speed`` (best timed pass), ``memory`` (peak of one pass) or ``flops``
    (operations of one pass)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    forward = build(impl, args)
    x = torch.randn(args.batch, length, args.dim, requires_grad=True)
    if mode == "flops":
        with FlopCounterMode(display=False) as counter:
            forward(x).float().square().mean().backward()
        return {"gflop": counter.get_total_flops() / 1e9}
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    best = float("inf")
    for _ in range(1 + args.repeats if mode == "speed" else 1):
        start = time.perf_counter()
        out = forward(x)
        out.float().square().mean().backward()
        best = min(best, time.perf_counter() - start)
        x.grad = None
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{impl}: non-finite output at length {length}")
    if mode == "speed":
        return {"tokens_per_s": args.batch * length / best, "seconds": best}
    return {"peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024}


def measure(impl: str, length: int, args) -> dict:
    row = {"impl": impl, "length": length, "batch": args.batch}
    for mode in ("speed", "memory", "flops"):
        command = [sys.executable, __file__, "--worker", impl, str(length), mode] + [
            f"--{name}={getattr(args, name)}"
            for name in ("dim", "heads", "chunk", "depth", "expansion", "batch", "repeats", "threads")
        ]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if mode == "memory" else None
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            return {**row, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return row


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    for impl, marker in zip(IMPLS, "o^s", strict=True):
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


def markdown_table(results: list[dict], lengths: list[int]) -> str:
    """tokens/s and peak MB per implementation and length, with memlm's ratios to titans-pytorch."""
    by = {(r["impl"], r["length"]): r for r in results}

    def cell(impl, length, key, fmt):
        row = by.get((impl, length), {})
        return format(row[key], fmt) if key in row else row.get("error", "-")[:24]

    def ratio(impl, length, key):
        ours, theirs = by.get((impl, length), {}), by.get(("titans-pytorch", length), {})
        return f"{ours[key] / theirs[key]:.2f}" if key in ours and key in theirs and theirs[key] > 0 else "-"

    lines = ["| T | " + " | ".join(f"{i} tok/s" for i in IMPLS) + " | speed memlm/titans | "
             + " | ".join(f"{i} peak MB" for i in IMPLS) + " | memory memlm/titans | memory recompute/titans |",
             "|" + "---|" * (2 * len(IMPLS) + 4)]
    for n in lengths:
        lines.append(f"| {n} | " + " | ".join(cell(i, n, "tokens_per_s", ".0f") for i in IMPLS)
                     + f" | {ratio('memlm', n, 'tokens_per_s')} | "
                     + " | ".join(cell(i, n, "peak_mb", ".0f") for i in IMPLS)
                     + f" | {ratio('memlm', n, 'peak_mb')} | {ratio('memlm-recompute', n, 'peak_mb')} |")
    return "\n".join(lines)


def arithmetic_table(results: list[dict], lengths: list[int]) -> str:
    """GFLOP of one forward+backward and the GFLOP/s reached, per implementation and length."""
    by = {(r["impl"], r["length"]): r for r in results}

    def cells(impl, length):
        row = by.get((impl, length), {})
        if "gflop" not in row:
            return "- | -"
        return f"{row['gflop']:.1f} | {row['gflop'] * row['tokens_per_s'] / (row['batch'] * length):.1f}"

    header = "| T | " + " | ".join(f"{i} GFLOP | {i} GFLOP/s" for i in IMPLS) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(IMPLS))]
    lines += [f"| {n} | " + " | ".join(cells(i, n) for i in IMPLS) + " |" for n in lengths]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.worker[2], args)))
        return []
    from tqdm import tqdm

    impls = [args.only] if args.only else IMPLS
    lengths = [int(n) for n in args.lengths.split(",")]
    results = [measure(impl, length, args)
               for length in tqdm(lengths, desc="lengths", file=sys.stderr) for impl in impls]
    print(f"dim {args.dim}, heads {args.heads}, chunk {args.chunk}, depth {args.depth}, expansion {args.expansion}, "
          f"batch {args.batch}, {args.threads} thread(s), forward+backward")
    print(markdown_table(results, lengths))
    print(arithmetic_table(results, lengths))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    if args.figure:
        plot(results, args.figure)
    print(f"measured {len(results)} runs")
    return results


if __name__ == "__main__":
    main()
