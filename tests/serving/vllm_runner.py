"""Greedy completions of a saved model with vLLM's offline engine (run as a script: vLLM starts processes).

    python vllm_runner.py [--textmem] MODEL_DIR OUT.json PROMPT [PROMPT ...]

writes ``{"texts": [...]}``: the completions of all prompts, generated as one batch (bf16, 12 tokens); with
``--textmem``, one prompt at a time through memlm's text-memory backend :class:`memlm.textmem.VLLMBackend`.
"""

import json
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ENGINE = dict(dtype="bfloat16", enforce_eager=True, max_model_len=512, max_num_seqs=8)

if __name__ == "__main__":
    args = sys.argv[1:]
    textmem = args[0] == "--textmem"
    model, out, *prompts = args[1:] if textmem else args
    if textmem:
        from memlm.textmem import VLLMBackend

        backend = VLLMBackend(model, temperature=0.0, **ENGINE)
        texts = [backend.generate(prompt, max_new_tokens=12) for prompt in prompts]
    else:
        from vllm import LLM, SamplingParams

        llm = LLM(model=model, **ENGINE)
        outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0), use_tqdm=False)
        texts = [o.outputs[0].text for o in outputs]
    with open(out, "w") as f:
        json.dump({"texts": texts}, f)
