"""Evaluate a saved causal LM on memlm's recall tasks; write JSON, a markdown table and PNG plots.

    python scripts/run_eval.py --model runs/mqar_hybrid_tiny --tasks mqar --mqar-vocab-size 64 --out runs/eval
    python scripts/run_eval.py --model DIR --tasks niah --context-lengths 256,512,1024 --depths 0,0.5,1 --out DIR
    python scripts/run_eval.py --model DIR --tasks doc_recall,icl_label_remapping,icl_associative_recall --out DIR

``doc_recall`` reports the plain prompt and JRT-Prompt (the context read twice) side by side.

Every argument, ``--out`` included (a writable directory, new or without an earlier report), and the fit of the
MQAR vocabulary to the model's are checked before the model's weights are loaded (safetensors only); the
result files are written atomically.

Works for any Hugging Face causal LM directory or hub name (``import memlm`` registers memlm's).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import memlm  # noqa: F401  (registers memlm's model type)
from memlm.data import mqar
from memlm.data.documents import MAX_ATTRIBUTES
from memlm.eval.report import check_output_dir, markdown_table, summarize, write_report
from memlm.eval.tasks import TASKS, EvalOptions, run_tasks


def comma_list(kind):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as error:
            message = f"expected comma-separated {kind.__name__} values, got {text!r}"
            raise argparse.ArgumentTypeError(message) from error

    return parse


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every argument that needs no model, ``--out`` included; ``parser.error`` (exit 2) on the first bad one."""
    if not args.tasks:
        parser.error(f"--tasks names no task (got an empty list); available: {sorted(TASKS)}")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; available: {sorted(TASKS)}")
    for name in ("num_examples", "batch_size", "max_new_tokens", "num_shots", "doc_num_attributes"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.doc_num_attributes > MAX_ATTRIBUTES:
        parser.error(f"--doc-num-attributes must be at most {MAX_ATTRIBUTES}, got {args.doc_num_attributes}")
    if "niah" in args.tasks:
        if not args.context_lengths or min(args.context_lengths) <= 0:
            parser.error(f"--context-lengths must be positive token counts, got {args.context_lengths}")
        if not args.depths or not all(0 <= d <= 1 for d in args.depths):
            parser.error(f"--depths must be fractions of the context in [0, 1], got {args.depths}")
    if "mqar" in args.tasks:
        if args.mqar_vocab_size is None:
            parser.error("task 'mqar' needs --mqar-vocab-size: the key/value vocabulary the model was trained on")
        try:  # mqar's own checks of the sizes, on one row
            mqar(1, args.mqar_seq_len, args.mqar_num_kv_pairs, args.mqar_vocab_size, context_repeats=2)
        except ValueError as error:
            parser.error(f"--mqar-seq-len {args.mqar_seq_len}, --mqar-num-kv-pairs {args.mqar_num_kv_pairs}, "
                         f"--mqar-vocab-size {args.mqar_vocab_size}: {error}")
    try:
        torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    try:
        check_output_dir(args.out)
    except ValueError as error:
        parser.error(f"--out: {error}")


def check_model_config(parser: argparse.ArgumentParser, args: argparse.Namespace, config) -> None:
    """The arguments that depend on the model (its ``config.json``, read before the weights)."""
    vocab_size = getattr(config, "vocab_size", None)
    if "mqar" in args.tasks and isinstance(vocab_size, int) and args.mqar_vocab_size > vocab_size:
        parser.error(f"--mqar-vocab-size {args.mqar_vocab_size} is larger than the model's vocab_size {vocab_size}: "
                     "MQAR token ids would lie outside its embedding; use the vocabulary it was trained on")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    check_model_config(parser, args, AutoConfig.from_pretrained(args.model))

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, use_safetensors=True).to(args.device).eval()
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
