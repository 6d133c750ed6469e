"""Rewards of a chain of layers for one sample, with reuse of the hidden states of shared path prefixes.

All teacher-forced rewards read one forward pass over ``prompt + answer`` through the chain:

- :func:`correct`: 1.0 if the argmax at every answer position is the gold token (the paper's oracle
  setting). With greedy decoding this is exactly "greedy generation starts with the gold answer".
- :func:`likelihood`: ``exp(mean log p(answer))`` of a reference answer, by default the full model's own
  greedy answer: needs no gold answer, usable at inference time.
- :func:`agreement`: the fraction of answer positions whose argmax equals the reference answer.

:class:`PrefixForward` computes those logits. Chains that share a prefix of layers (``[0, 1, 1, 2]`` and
``[0, 1, 1, 3]``) share the hidden states after it: the states after every prefix it runs are kept, a new
path runs only the layers after its longest stored prefix (fed to the decoder as ``inputs_embeds``), and
``layers_saved`` counts the layer evaluations this avoided. :class:`GeneratedAnswerReward` is the free-running
alternative for answers that need an extractor (``"The answer is 42."`` -> ``"42"``); it does not reuse prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from memlm.cola.chain import chain, decoder_of


class PrefixForward:
    """Logits ``[T, vocab]`` of one token sequence under any chain, reusing stored prefix hidden states.

    Args:
        model: a causal LM whose decoder :func:`~memlm.cola.chain` supports and whose forward accepts
            ``inputs_embeds`` unscaled (Llama, Qwen2/3, Mistral, memlm).
        input_ids: ``[T]`` or ``[1, T]`` tokens (prompt and answer).
        max_prefixes: stored prefixes at most (least recently used are dropped), bounding memory.
    """

    def __init__(self, model: nn.Module, input_ids: torch.Tensor, max_prefixes: int = 4096):
        self.model = model
        self.input_ids = input_ids.reshape(1, -1)
        self.max_prefixes = max_prefixes
        self.prefixes: dict[tuple[int, ...], torch.Tensor] = {}
        self.layers_run = 0
        self.layers_saved = 0

    @torch.no_grad()
    def logits(self, path: Sequence[int]) -> torch.Tensor:
        path = tuple(path)
        start = next((n for n in range(len(path), 0, -1) if path[:n] in self.prefixes), 0)
        if start == len(path):  # the whole path is stored: only the final norm and head remain
            start -= 1
        hidden = self.prefixes.get(path[:start])
        outputs = []
        with chain(self.model, path[start:]):
            hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple)
                                                                                    else out))
                     for layer in decoder_of(self.model).layers]
            try:
                if hidden is None:
                    result = self.model(input_ids=self.input_ids, use_cache=False)
                else:
                    result = self.model(inputs_embeds=hidden, use_cache=False)
            finally:
                for hook in hooks:
                    hook.remove()
        for offset, state in enumerate(outputs):
            self._store(path[: start + offset + 1], state)
        self.layers_run += len(path) - start
        self.layers_saved += start
        return result.logits[0].float()

    def _store(self, prefix: tuple[int, ...], state: torch.Tensor) -> None:
        self.prefixes.pop(prefix, None)
        self.prefixes[prefix] = state
        while len(self.prefixes) > self.max_prefixes:
            self.prefixes.pop(next(iter(self.prefixes)))


def _answer_slice(logits: torch.Tensor, answer_length: int) -> torch.Tensor:
    """The logits that predict the last ``answer_length`` tokens: ``[answer_length, vocab]``."""
    return logits[-answer_length - 1 : -1]


def correct(logits: torch.Tensor, answer_ids: torch.Tensor) -> float:
    """1.0 if every answer token is the argmax of the logits before it (oracle reward), else 0.0."""
    return float(bool((_answer_slice(logits, len(answer_ids)).argmax(-1) == answer_ids).all()))


def likelihood(logits: torch.Tensor, answer_ids: torch.Tensor) -> float:
    """``exp(mean log p(answer_t | prefix))`` in (0, 1]."""
    log_probs = torch.log_softmax(_answer_slice(logits, len(answer_ids)), dim=-1)
    return float(log_probs.gather(-1, answer_ids[:, None]).mean().exp())


def agreement(logits: torch.Tensor, answer_ids: torch.Tensor) -> float:
    """Fraction of answer positions whose argmax is the answer token."""
    return float((_answer_slice(logits, len(answer_ids)).argmax(-1) == answer_ids).float().mean())


REWARDS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "correct": correct, "likelihood": likelihood, "agreement": agreement,
}


@torch.no_grad()
def greedy_answer(model: nn.Module, prompt_ids: torch.Tensor, length: int) -> torch.Tensor:
    """The full model's own greedy continuation ``[length]`` of ``prompt_ids`` (the reference answer)."""
    out = model.generate(prompt_ids.reshape(1, -1), max_new_tokens=length, min_new_tokens=length, do_sample=False)
    return out[0, prompt_ids.numel():]


class TeacherForcedReward:
    """``reward(path) -> float`` for one sample: a teacher-forced reward over ``prompt + answer``.

    Args:
        model: the causal LM.
        prompt_ids: ``[P]`` prompt tokens.
        answer_ids: ``[A]`` answer tokens: the gold answer for ``kind="correct"``; for ``likelihood`` and
            ``agreement`` None means the full model's own greedy answer of ``answer_length`` tokens.
        kind: ``"correct"``, ``"likelihood"`` or ``"agreement"``.
    """

    def __init__(self, model: nn.Module, prompt_ids: torch.Tensor, answer_ids: torch.Tensor | None = None,
                 kind: str = "correct", answer_length: int | None = None):
        if kind not in REWARDS:
            raise ValueError(f"reward kind {kind!r} is unknown; allowed: {sorted(REWARDS)}")
        if answer_ids is None:
            if kind == "correct":
                raise ValueError("kind='correct' needs the gold answer_ids")
            if not answer_length:
                raise ValueError("without answer_ids, give answer_length (tokens of the model's own answer)")
            answer_ids = greedy_answer(model, prompt_ids, answer_length)
        self.answer_ids = answer_ids.reshape(-1)
        self.score = REWARDS[kind]
        self.forward = PrefixForward(model, torch.cat([prompt_ids.reshape(-1), self.answer_ids]))

    def __call__(self, path: Sequence[int]) -> float:
        return self.score(self.forward.logits(path), self.answer_ids)

    @property
    def layers_saved(self) -> int:
        return self.forward.layers_saved


class GeneratedAnswerReward:
    """1.0 if the extracted answer of the chain's greedy generation equals the gold answer, else 0.0.

    ``extractor`` maps the generated text to an answer string (default: its first line, stripped).
    """

    def __init__(self, model: nn.Module, tokenizer, prompt: str, gold: str, max_new_tokens: int = 32,
                 extractor: Callable[[str], str] | None = None):
        self.model, self.tokenizer, self.gold = model, tokenizer, gold.strip()
        self.prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        self.max_new_tokens = max_new_tokens
        self.extractor = extractor or (lambda text: text.strip().split("\n")[0].strip())
        self.layers_saved = 0

    @torch.no_grad()
    def __call__(self, path: Sequence[int]) -> float:
        with chain(self.model, path):
            out = self.model.generate(self.prompt_ids, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.tokenizer.decode(out[0, self.prompt_ids.shape[1]:], skip_special_tokens=True)
        return float(self.extractor(text) == self.gold)
