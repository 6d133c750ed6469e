"""Train (or LoRA-fine-tune) a causal LM from a YAML recipe, on anything Accelerate runs on.

    accelerate launch recipes/train.py --config recipes/configs/mqar_hybrid_tiny.yaml [key.sub=value ...]
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/train.py --config FILE

Overrides are dotted keys (``train.max_steps=20 output_dir=/tmp/run``); see memlm/training/config.py
for every section and key. The config is checked completely before any work starts.
"""

from __future__ import annotations

import argparse
import json

from memlm.training import load_config, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; overrides may come before, between or after the options."""
    parser = argparse.ArgumentParser(description="Train a causal LM from a memlm recipe.")
    parser.add_argument("--config", required=True, help="YAML recipe")
    parser.add_argument("--stop-at", type=int, default=None,
                        help="end after this optimizer step with a checkpoint (resume later with "
                             "checkpoint.resume_from=latest)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an output_dir that holds another run (its checkpoints, log and "
                             "summary are deleted); without it such an output_dir is refused")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
    args = parser.parse_intermixed_args(argv)
    if args.stop_at is not None and args.stop_at <= 0:
        parser.error(f"--stop-at must be positive, got {args.stop_at}")
    return args


def main() -> None:
    args = parse_args()
    result = train(load_config(args.config, args.overrides), stop_at=args.stop_at, overwrite=args.overwrite)
    print("summary: " + json.dumps(result.summary))


if __name__ == "__main__":
    main()
