"""Greedy completions of a saved model with vLLM's offline engine (run as a script: vLLM starts processes).

    python vllm_runner.py MODEL_DIR OUT.json PROMPT [PROMPT ...]

writes ``{"texts": [...]}``: the completions of all prompts, generated as one batch (bf16, 12 tokens).
"""

import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model, out, *prompts = sys.argv[1:]
    llm = LLM(model=model, dtype="bfloat16", enforce_eager=True, max_model_len=512, max_num_seqs=8)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0), use_tqdm=False)
    with open(out, "w") as f:
        json.dump({"texts": [o.outputs[0].text for o in outputs]}, f)
