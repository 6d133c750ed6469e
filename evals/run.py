"""Evaluate a saved causal LM on memlm's recall tasks; write JSON, a markdown table and PNG plots.

    python evals/run.py --model runs/mqar_hybrid_tiny --tasks mqar --mqar-vocab-size 64 --out runs/eval
    python evals/run.py --model DIR --tasks niah --context-lengths 256,512,1024 --depths 0,0.5,1 --out DIR
    python evals/run.py --model DIR --tasks doc_recall,icl_label_remapping,icl_associative_recall --out DIR

``doc_recall`` reports the plain prompt and JRT-Prompt (the context read twice) side by side.

Works for any Hugging Face causal LM directory or hub name (``import memlm`` registers memlm's).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import memlm  # noqa: F401  (registers memlm's model type)
from memlm.data.documents import MAX_ATTRIBUTES
from memlm.eval.report import markdown_table, summarize, write_report
from memlm.eval.tasks import TASKS, EvalOptions, run_tasks


def comma_list(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as error:
            message = f"expected comma-separated {kind.__name__} values, got {text!r}"
            raise argparse.ArgumentTypeError(message) from error

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate a causal LM on memlm's recall tasks.")
    parser.add_argument("--model", required=True, help="model directory or hub name")
    parser.add_argument("--tasks", required=True, type=comma_list(str), help=f"comma-separated: {sorted(TASKS)}")
    parser.add_argument("--out", required=True, help="output directory for results.json, results.md and plots")
    parser.add_argument("--num-examples", type=int, default=50, help="examples per task (per grid cell for niah)")
    parser.add_argument("--context-lengths", type=comma_list(int), default=[256, 512, 1024])
    parser.add_argument("--depths", type=comma_list(float), default=[0.0, 0.5, 1.0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--mqar-seq-len", type=int, default=64)
    parser.add_argument("--mqar-num-kv-pairs", type=int, default=8)
    parser.add_argument("--mqar-vocab-size", type=int, default=None)
    parser.add_argument("--num-shots", type=int, default=8, help="shots of the icl_* tasks")
    parser.add_argument("--doc-num-attributes", type=int, default=6,
                        help=f"attributes per document of doc_recall (1 to {MAX_ATTRIBUTES})")
    parser.add_argument("--mqar-jrt", action="store_true",
                        help="also read every MQAR row with its key-value block twice (JRT-Prompt)")
    parser.add_argument("--niah-jrt", action="store_true",
                        help="also ask every needle with JRT-Prompt (the haystack read twice, the question first)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; available: {sorted(TASKS)}")
    for name in ("num_examples", "batch_size", "max_new_tokens", "num_shots", "doc_num_attributes"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")

    if args.doc_num_attributes > MAX_ATTRIBUTES:
        parser.error(f"--doc-num-attributes must be at most {MAX_ATTRIBUTES}, got {args.doc_num_attributes}")

    model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    options = EvalOptions(
        num_examples=args.num_examples, context_lengths=args.context_lengths, depths=args.depths,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed,
        mqar_seq_len=args.mqar_seq_len, mqar_num_kv_pairs=args.mqar_num_kv_pairs,
        mqar_vocab_size=args.mqar_vocab_size, num_shots=args.num_shots, doc_num_attributes=args.doc_num_attributes,
        mqar_jrt=args.mqar_jrt, niah_jrt=args.niah_jrt,
    )
    started = time.perf_counter()
    records = run_tasks(model, tokenizer, args.tasks, options)
    paths = write_report(records, args.out, meta={"model": args.model, "tasks": args.tasks, **vars(options)})
    print(markdown_table(summarize(records)))
    overall = sum(r["score"] for r in records) / len(records)
    print(f"summary: {len(records)} examples in {time.perf_counter() - started:.0f}s, mean score {overall:.3f}; "
          f"wrote {', '.join(str(p) for p in paths.values())}")


if __name__ == "__main__":
    main()
