"""Prefill throughput: JRT-RNN (prefix linear attention, sliding-window attention, short gated convolutions)
against an all-attention model run by PyTorch's SDPA, on CPU.

Both models have the same width, depth and heads; the mixers differ (JRT-RNN's layer pattern of
:func:`memlm.jrt_rnn_config`, or ``"full_attention"`` everywhere with ``attn_implementation="sdpa"``), and the
attention model's MLPs are widened until both have the same number of parameters (JRT-RNN's gated
convolutions are wider than attention's projections). A prefill is ``model(ids, use_cache=True)`` on one
sequence of ``T`` tokens, which also builds the generation cache; the JRT-RNN reads the whole sequence as its
prefix (``prefix_length=T``). Each length is timed ``--repeats`` times after one warm-up at that length, and the
best time is kept::

    python scripts/bench_prefill.py --lengths 2048,4096,8192,16384 --threads 2 \\
        --json docs/results/jrt_rnn_prefill/bench_prefill.json

Prints tokens/s per model and length, and JRT-RNN's speed-up over attention.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="2048,4096,8192,16384")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--window", type=int, default=128, help="JRT-RNN's sliding window")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args(argv)
    args.lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    if not args.lengths or min(args.lengths) <= 0:
        parser.error(f"--lengths must be positive integers, got {args.lengths}")
    return args


def build_models(args: argparse.Namespace) -> dict:
    import torch

    import memlm

    common = {"hidden_size": args.hidden_size, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
              "vocab_size": 256, "intermediate_size": 2 * args.hidden_size,
              "max_position_embeddings": max(args.lengths)}
    jrt = memlm.jrt_rnn_config(sliding_window=args.window, mask_token_id=0, **common)
    narrow = memlm.MemLMConfig(hybrid_ratio="0:1", **common)
    missing = parameter_count(jrt) - parameter_count(narrow)  # made up by wider MLPs (3 matrices of h x I each)
    common["intermediate_size"] += max(0, round(missing / (3 * args.hidden_size * args.layers)))
    attention = memlm.MemLMConfig(hybrid_ratio="0:1", **common)
    attention._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return {
        "JRT-RNN": memlm.MemLMForCausalLM(jrt).eval(),
        "attention (SDPA)": memlm.MemLMForCausalLM(attention).eval(),
    }


def parameter_count(config) -> int:
    import torch

    import memlm

    with torch.device("meta"):
        return sum(p.numel() for p in memlm.MemLMForCausalLM(config).parameters())


def prefill_seconds(model, length: int, repeats: int) -> float:
    import torch

    ids = torch.randint(0, 256, (1, length))
    prefix = {"prefix_length": length} if "prefix_linear_attention" in model.config.layer_types else {}
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first is the warm-up
            started = time.perf_counter()
            model(ids, use_cache=True, logits_to_keep=1, **prefix)
            times.append(time.perf_counter() - started)
    return min(times[1:])


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from harness.runs import machine_description

    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args)
    sizes = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    print(f"{machine_description()}; torch threads {torch.get_num_threads()}")
    print("parameters: " + ", ".join(f"{name} {n / 1e6:.1f}M" for name, n in sizes.items()))
    results = {"machine": machine_description(), "threads": torch.get_num_threads(), "parameters": sizes,
               "args": {k: v for k, v in vars(args).items() if k != "json"}, "tokens_per_s": {}}
    print("| tokens | JRT-RNN tok/s | attention (SDPA) tok/s | JRT-RNN speed-up |")
    print("|---|---|---|---|")
    for length in args.lengths:
        speeds = {name: length / prefill_seconds(model, length, args.repeats) for name, model in models.items()}
        results["tokens_per_s"][length] = speeds
        print(f"| {length} | {speeds['JRT-RNN']:.0f} | {speeds['attention (SDPA)']:.0f} | "
              f"{speeds['JRT-RNN'] / speeds['attention (SDPA)']:.2f}x |", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
