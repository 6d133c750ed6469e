"""The training recipe of a synthetic-task run, shared by the reproduction scripts."""

from __future__ import annotations


def synthetic_task_recipe(output_dir: str, model_config: dict, task: str, task_args: dict, seq_len: int, steps: int,
                          batch_size: int, lr: float, seed: int, eval_examples: int) -> dict:
    """The raw recipe of a synthetic-task run (``mqar`` or ``passkey``): integer tokenizer, AdamW with weight
    decay 0.1, cosine schedule, no checkpoints or trackers, the task's own held-out evaluation."""
    return {
        "output_dir": output_dir,
        "model": {"config": model_config},
        "tokenizer": {"kind": "integer"},
        "data": {"source": task, "seq_len": seq_len, task: task_args},
        "optimizer": {"lr": lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": min(50, max(1, steps // 10)), "min_lr_ratio": 0.05},
        "train": {"max_steps": steps, "batch_size": batch_size, "precision": "no", "seed": seed,
                  "log_every": max(1, steps // 5)},
        "checkpoint": {"every": 0, "keep": 1},
        "logging": {"trackers": []},
        "eval": {"tasks": [task], "num_examples": eval_examples},
    }
