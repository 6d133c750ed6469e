"""Distill a pretrained Transformer (Llama, Mistral, Qwen2, Qwen3) into a memlm hybrid from a YAML recipe.

    accelerate launch recipes/distill.py --config recipes/configs/distill_tiny.yaml [key.sub=value ...]
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/distill.py --config FILE

Overrides are dotted keys (``stage2.steps=200 teacher=Qwen/Qwen3-0.6B``); see memlm/distill/config.py for every
section and key. The recipe and the teacher's config are checked completely before any work starts.
"""

from __future__ import annotations

import argparse
import json

from memlm.distill.config import load_config
from memlm.distill.run import distill
from memlm.training.config import recipe_arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``recipes/train.py``: ``--config``, ``--stop-at`` (a step counted across both stages),
    ``--overwrite`` and dotted overrides anywhere."""
    return recipe_arguments("Distill a pretrained Transformer into a memlm hybrid.", argv)


def main() -> None:
    args = parse_args()
    result = distill(load_config(args.config, args.overrides), stop_at=args.stop_at, overwrite=args.overwrite)
    print("summary: " + json.dumps({key: result.summary.get(key) for key in
                                    ("steps", "kept_attention", "heldout", "loss_ratio", "saved_to")}))


if __name__ == "__main__":
    main()
