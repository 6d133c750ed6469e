"""CoLa on a CPU: train a small Llama on addition, then search a chain of layers for every held-out sample.

1. writes ``a+b=c`` lines (``--digits``-digit operands; the held-out pairs never appear in training);
2. trains a ``--layers``-layer transformers ``LlamaForCausalLM`` on them with memlm's recipe trainer
   (byte-level tokenizer, packed lines), for ``--steps`` steps;
3. runs ``python -m memlm.cola.evaluate`` on ``--eval-samples`` held-out sums (oracle reward: greedy decoding
   of the chain reproduces the sum) and writes its table, with this command, to ``--out``::

    python scripts/cola_demo.py --steps 1500 --eval-samples 100 --simulations 100 \\
        --out docs/results/cola_demo/cola_demo.md --figure docs/results/cola_demo/cola_chain_lengths.png

Depth matters in addition (carries), so the search can both shorten chains and fix wrong sums.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--simulations", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="docs/results/cola_demo/cola_demo.md")
    parser.add_argument("--figure", default="docs/results/cola_demo/cola_chain_lengths.png")
    args = parser.parse_args(argv)
    for name in ("digits", "layers", "steps", "eval_samples", "simulations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def addition_data(args, workdir: Path) -> tuple[Path, Path]:
    """Training lines and held-out ``{prompt, answer}`` samples (disjoint operand pairs)."""
    rng = random.Random(args.seed)
    low, high = 10 ** (args.digits - 1), 10**args.digits - 1
    pairs = [(a, b) for a in range(low, high + 1) for b in range(low, high + 1)]
    rng.shuffle(pairs)
    held_out, train = pairs[: args.eval_samples], pairs[args.eval_samples :]
    train_file = workdir / "train.txt"
    train_file.write_text("".join(f"{a}+{b}={a + b}\n" for a, b in train))
    eval_file = workdir / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                                 for a, b in held_out))
    return train_file, eval_file


def initial_model(args, workdir: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from memlm.tokenization import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=4, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    directory = workdir / "init"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main(argv=None) -> dict:
    args = parse_args(argv)
    from harness.runs import script_command

    command = script_command(__file__, argv)
    import torch

    from harness.runs import machine_description
    from memlm.cola.evaluate import main as evaluate
    from memlm.training import train
    from memlm.training.config import config_from_dict

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cola_demo_", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_file, eval_file = addition_data(args, workdir)
    init = initial_model(args, workdir)
    trained = workdir / "trained"
    train(config_from_dict({
        "output_dir": str(trained),
        "model": {"pretrained": str(init)},
        "tokenizer": {"kind": "pretrained", "path": str(init)},
        "data": {"source": "text", "files": [str(train_file)], "seq_len": 64},
        "optimizer": {"lr": args.lr, "weight_decay": 0.01},
        "schedule": {"kind": "cosine", "warmup_steps": min(100, args.steps // 10 + 1)},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                  "log_every": max(1, args.steps // 10)},
        "checkpoint": {"every": 0, "keep": 1},
        "logging": {"trackers": []},
    }))
    results = workdir / "cola"
    if results.exists():
        shutil.rmtree(results)
    summary = evaluate(["--model", str(trained), "--data", str(eval_file), "--out", str(results),
                        "--simulations", str(args.simulations), "--seed", str(args.seed)])
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(results / "chain_lengths.png", args.figure)
    figure = os.path.relpath(args.figure, Path(args.out).parent)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(f"""# CoLa demo on a CPU (generated)

Command (from the repository root):

```
{command}
```

A {args.layers}-layer Llama (hidden {args.hidden_size}, byte-level tokens) trained for {args.steps} steps
(batch {args.batch_size}, lr {args.lr}) on {args.digits}-digit sums `a+b=c`; MCTS over chains of its
layers ({args.simulations} simulations, oracle reward: greedy decoding of the chain gives the sum) on
{args.eval_samples} held-out sums. Machine: {machine_description()}. Wall time
{(time.perf_counter() - start) / 60:.1f} min.

{(results / "summary.md").read_text()}
![best-chain lengths]({figure})
""")
    print(f"wrote {args.out} and {args.figure}")
    return summary


if __name__ == "__main__":
    main()
