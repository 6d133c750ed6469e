"""JRT-RNN's inputs for training: the prefix length of every document and its masked prefix tokens.

:class:`PrefixLMInputs` is what ``memlm.training``'s packed collator applies to each batch of a model trained
with the prefix-LM objective (:mod:`memlm.models.jrt_rnn.objective`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memlm.models.jrt_rnn.objective import mask_prefix_tokens
from memlm.ops.prefix_linear_attention import prefix_token_mask


@dataclass
class PrefixLMInputs:
    """How the training collator prepares JRT-RNN's prefix-LM objective (:mod:`memlm.models.jrt_rnn.objective`).

    ``prefix_length``: a fixed prefix per document (None: each document's prompt, the leading tokens without
    loss); ``probability`` of masking a prefix token with ``mask_token_id`` (the torch RNG draws, so a seeded
    run repeats).
    """

    prefix_length: int | None
    probability: float
    mask_token_id: int

    @classmethod
    def for_model(cls, model_config, prefix_length: int | None) -> PrefixLMInputs | None:
        """The settings of a model whose config has ``prefix_lm_objective``, else None (and ``prefix_length``, the
        recipe's ``data.prefix_length``, must then be unset: nothing would read it)."""
        if not getattr(model_config, "prefix_lm_objective", False):
            if prefix_length is not None:
                raise ValueError(
                    f"data.prefix_length={prefix_length} is set, but the model's config has no "
                    "prefix_lm_objective: set model.config.prefix_lm_objective=true (a JRT-RNN) or drop "
                    "data.prefix_length"
                )
            return None
        if model_config.prefix_mlm_weight == 0:  # no masked-token loss: the inputs stay whole
            return cls(prefix_length, 0.0, 0)
        if model_config.mask_token_id is None:
            raise ValueError(
                f"the model's config has prefix_lm_objective=True and prefix_mlm_weight="
                f"{model_config.prefix_mlm_weight}, which masks prefix tokens with mask_token_id, but mask_token_id "
                "is None: set model.config.mask_token_id (a token id the data never uses, e.g. the tokenizer's mask "
                "or pad token) or model.config.prefix_mlm_weight=0"
            )
        return cls(prefix_length, model_config.prefix_mlm_probability, model_config.mask_token_id)

    def apply(self, batch: dict[str, torch.Tensor], prefix_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Add ``prefix_length`` and ``mlm_labels`` to ``batch`` and mask its prefix tokens."""
        if self.prefix_length is not None:
            prefix_lengths = torch.full_like(prefix_lengths, self.prefix_length)
        input_ids = batch["input_ids"]
        cu_seqlens = batch.get("cu_seq_lens_q")
        sequence_lengths = cu_seqlens.diff() if cu_seqlens is not None else torch.full_like(prefix_lengths,
                                                                                          input_ids.shape[1])
        prefix_lengths = torch.minimum(prefix_lengths, sequence_lengths)  # a document shorter than the prefix
        prefix_mask = prefix_token_mask(prefix_lengths, *input_ids.shape, cu_seqlens)
        masked, mlm_labels = mask_prefix_tokens(input_ids, prefix_mask, self.probability, self.mask_token_id)
        return {**batch, "input_ids": masked, "mlm_labels": mlm_labels, "prefix_length": prefix_lengths}
