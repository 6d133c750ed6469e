"""lm-evaluation-harness's command line with memlm's model type registered, for memlm checkpoints.

``lm-eval run --model hf --model_args pretrained=DIR`` loads DIR with transformers' Auto classes, which know
``model_type: memlm`` only after ``import memlm``; this wrapper imports memlm, then runs lm-eval's CLI with
the same arguments::

    python scripts/lm_eval_cli.py run --model hf --model_args pretrained=DIR \
        --include_path lm_eval_tasks --tasks memlm_recall

Any other Hugging Face causal LM works the same way (and also with plain ``lm-eval run``).
"""

from lm_eval.__main__ import cli_evaluate

import memlm  # noqa: F401  (registers memlm's model type with transformers' Auto classes)

if __name__ == "__main__":
    cli_evaluate()
