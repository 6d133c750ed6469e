"""Greedy answers from any HF causal LM, in left-padded batches.

Left padding keeps every prompt's last token at the end of the row, so the first generated token
follows it directly; memlm's recurrent layers never let padding into their state, so a batch gives
each prompt the answer it gets alone (tested).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def greedy_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    stop_at_newline: bool = True,
    progress: bool = False,
) -> list[str]:
    """Generate greedily after each prompt; return the new text (cut at the first newline if asked).

    Args:
        model: a causal LM with ``generate``; its device is used.
        tokenizer: the model's tokenizer; needs a pad (or EOS) token.
        prompts: the prompts, encoded without special tokens added.
        max_new_tokens: generation budget per prompt (the JRT recall suite uses 48).
        batch_size: prompts per ``generate`` call (left-padded).
    """
    if batch_size <= 0 or max_new_tokens <= 0:
        raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size}, {max_new_tokens}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad batches with")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generate", disable=not progress):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
            )
        for row in out[:, width:]:
            text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
            answers.append(text.split("\n", 1)[0] if stop_at_newline else text)
    model.train(was_training)
    return answers
