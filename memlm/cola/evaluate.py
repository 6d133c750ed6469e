"""Chain-of-layers evaluation: search a chain per sample and report what depth adaptation buys.

    python -m memlm.cola.evaluate --model DIR --data samples.jsonl --out results/ [--simulations 200]

``samples.jsonl`` holds one ``{"prompt": ..., "answer": ...}`` per line. For every sample the full model is
scored (greedy decoding reproduces the answer: the oracle reward), then :func:`memlm.cola.mcts` searches
chains with the chosen reward. Written to ``--out``:

- ``samples.jsonl``: per sample, the full model's correctness, the best chain, its reward and correctness,
  the shortest correct chain found, evaluations and the layer evaluations saved by prefix reuse. One line
  is appended as each sample finishes, so a stopped run resumes where it stopped;
- ``summary.json`` and ``summary.md``: full-model accuracy, the fraction of correct samples with a shorter
  correct chain, the fraction of wrong samples that some chain fixes, the histogram of best-chain lengths;
- ``chain_lengths.png``: that histogram against the model's depth.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal LM directory (or hub name)")
    parser.add_argument("--data", required=True, help="JSONL of {prompt, answer}")
    parser.add_argument("--out", required=True, help="output folder (resumed if it holds samples.jsonl)")
    parser.add_argument("--reward", default="correct", choices=["correct", "likelihood", "agreement"],
                        help="the search's reward: the oracle (gold answer) or one that needs no gold answer")
    parser.add_argument("--simulations", type=int, default=200)
    parser.add_argument("--max-block", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=None, help="longest chain (default 2 x layers)")
    parser.add_argument("--length-penalty", type=float, default=5.0)
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.simulations < 1:
        parser.error(f"--simulations must be >= 1, got {args.simulations}")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data!r} is not a file")
    return args


def read_samples(path: str, limit: int | None) -> list[dict]:
    samples = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
        valid = isinstance(sample, dict) and isinstance(sample.get("prompt"), str)
        if not (valid and isinstance(sample.get("answer"), str) and sample["answer"]):
            raise ValueError(f"{path}:{number}: needs a string 'prompt' and a non-empty string 'answer'")
        samples.append(sample)
    if not samples:
        raise ValueError(f"{path} holds no samples")
    return samples[:limit]


def evaluate_sample(model, tokenizer, sample: dict, num_layers: int, args) -> dict:
    from memlm.cola import TeacherForcedReward, mcts

    prompt_ids = tokenizer(sample["prompt"], return_tensors="pt")["input_ids"][0]
    answer_ids = tokenizer(sample["answer"], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    oracle = TeacherForcedReward(model, prompt_ids, answer_ids, kind="correct")
    if args.reward == "correct":
        reward = oracle
    else:
        reward = TeacherForcedReward(model, prompt_ids, None, kind=args.reward, answer_length=len(answer_ids))
    full = list(range(num_layers))
    result = mcts(reward, num_layers, num_simulations=args.simulations, max_block=args.max_block,
                  max_length=args.max_length, length_penalty=args.length_penalty, seed=args.seed)
    # the oracle score of every searched chain (the search always scores the full chain first)
    scores = result.rewards if reward is oracle else {path: oracle(path) for path in result.rewards}
    correct_chains = [path for path, value in scores.items() if value == 1.0]
    shortest = min(correct_chains, key=len) if correct_chains else None
    return {
        "prompt": sample["prompt"],
        "answer": sample["answer"],
        "full_correct": scores[tuple(full)] == 1.0,
        "best_path": result.best_path,
        "best_reward": result.best_reward,
        "best_correct": scores[tuple(result.best_path)] == 1.0,
        "shortest_correct_path": list(shortest) if shortest else None,
        "evaluations": result.evaluations,
        "layers_saved": result.layers_saved,
    }


def summarize(records: list[dict], num_layers: int) -> dict:
    right = [r for r in records if r["full_correct"]]
    wrong = [r for r in records if not r["full_correct"]]
    return {
        "samples": len(records),
        "num_layers": num_layers,
        "full_model_accuracy": len(right) / len(records),
        "correct_with_shorter_correct_chain": (
            sum(len(r["shortest_correct_path"] or range(num_layers)) < num_layers for r in right) / len(right)
            if right else None),
        "wrong_fixed_by_a_chain": (sum(r["shortest_correct_path"] is not None for r in wrong) / len(wrong)
                                   if wrong else None),
        "best_chain_accuracy": sum(r["best_correct"] for r in records) / len(records),
        "best_chain_length_histogram": dict(sorted(Counter(len(r["best_path"]) for r in records).items())),
        "layers_saved_by_prefix_reuse": sum(r["layers_saved"] for r in records),
    }


def write_summary(summary: dict, out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    lines = [
        "| metric | value |", "|---|---|",
        f"| samples | {summary['samples']} |",
        f"| full-model accuracy | {pct(summary['full_model_accuracy'])} |",
        f"| correct samples with a shorter correct chain | {pct(summary['correct_with_shorter_correct_chain'])} |",
        f"| wrong samples fixed by some chain | {pct(summary['wrong_fixed_by_a_chain'])} |",
        f"| accuracy of the search's best chain | {pct(summary['best_chain_accuracy'])} |",
        f"| layer evaluations saved by prefix reuse | {summary['layers_saved_by_prefix_reuse']} |",
        "", "| best-chain length | samples |", "|---|---|",
        *[f"| {length} | {count} |" for length, count in summary["best_chain_length_histogram"].items()],
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histogram = summary["best_chain_length_histogram"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([int(k) for k in histogram], list(histogram.values()), color="tab:blue")
    ax.axvline(summary["num_layers"], color="grey", linestyle="--", label="model depth")
    ax.set_xlabel("best-chain length (layers run)")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "chain_lengths.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import memlm  # noqa: F401  (registers memlm's model with the Auto classes)
    from memlm.cola.chain import decoder_of

    samples = read_samples(args.data, args.max_samples)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True).eval()  # never a pickle
    num_layers = len(decoder_of(model).layers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "samples.jsonl"
    records = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    if records:
        print(f"resuming: {len(records)} of {len(samples)} samples already done", file=sys.stderr)
    torch.manual_seed(args.seed)
    with done_file.open("a") as sink:
        for sample in tqdm(samples[len(records):], desc="samples", initial=len(records), total=len(samples)):
            record = evaluate_sample(model, tokenizer, sample, num_layers, args)
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            records.append(record)
    summary = summarize(records, num_layers)
    write_summary(summary, out)
    print((out / "summary.md").read_text())
    print(f"{summary['samples']} samples: full model {100 * summary['full_model_accuracy']:.1f}%, "
          f"best chains {100 * summary['best_chain_accuracy']:.1f}%; wrote {out}")
    return summary


if __name__ == "__main__":
    main()
