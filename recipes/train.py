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
from memlm.training.config import recipe_arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; overrides may come before, between or after the options."""
    return recipe_arguments("Train a causal LM from a memlm recipe.", argv)


def main() -> None:
    args = parse_args()
    result = train(load_config(args.config, args.overrides), stop_at=args.stop_at, overwrite=args.overwrite)
    print("summary: " + json.dumps(result.summary))


if __name__ == "__main__":
    main()
