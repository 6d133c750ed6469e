"""JRT-RNN (Arora et al., arXiv 2407.05483) in one place, apart from its mixers and op.

- :mod:`.preset`: ``jrt_rnn_config`` and the paper's layer pattern ``jrt_rnn_mixer_types``;
- :mod:`.objective`: the prefix-LM loss (next-token loss on the suffix + masked-token loss on the prefix), the
  prefix masking and the prompt lengths read as prefixes;
- :mod:`.collator`: :class:`PrefixLMInputs`, how training batches get their prefixes and masked tokens;
- ``prefix_token_mask``: the ``[B, T]`` prefix mask from prefix lengths (kept beside the op it feeds,
  :mod:`memlm.ops.prefix_linear_attention`, and exported here).

The mixers are ``"prefix_linear_attention"`` (:mod:`memlm.layers.prefix_linear_attention`) and ``"conv"``
(:mod:`memlm.layers.gated_conv`); a model says whether it reads a prefix with ``model.reads_prefix``.
"""

from memlm.models.jrt_rnn.collator import PrefixLMInputs
from memlm.models.jrt_rnn.objective import mask_prefix_tokens, prefix_lm_loss, prompt_lengths
from memlm.models.jrt_rnn.preset import jrt_rnn_config, jrt_rnn_mixer_types
from memlm.ops.prefix_linear_attention import prefix_token_mask

__all__ = ["PrefixLMInputs", "jrt_rnn_config", "jrt_rnn_mixer_types", "mask_prefix_tokens", "prefix_lm_loss",
           "prefix_token_mask", "prompt_lengths"]
