"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology (arXiv 2312.04927).

Each row first lists ``num_kv_pairs`` key-value pairs, then queries every key once; the model must
answer each query with the key's value. With ``n = num_kv_pairs`` and ``space = (seq_len - 2 n) // 2``:

* keys are drawn without replacement from ``[1, vocab_size // 2)``, values without replacement from
  ``[vocab_size // 2, vocab_size)``, and positions ``0 .. 2n - 1`` hold ``k_1 v_1 k_2 v_2 ... k_n v_n``;
* n distinct gaps ``g_1, ..., g_n`` are drawn one after the other, without replacement, from
  ``1 .. space`` with the power law ``p(g) ∝ power_a * g ** (power_a - 1)`` (``power_a = 1`` is uniform,
  small ``power_a`` favours short gaps), and key ``k_i`` is queried at position ``q_i = 2n + 2 (g_i - 1)``.
  So the keys are assigned to gaps in pair order, as Zoology's ``put_along_axis`` does; since the gaps
  come out in draw order, short ones first on average, the queries mostly but not always follow the
  order of the pairs;
* every other position holds a uniform random token from ``[0, vocab_size)`` (``random_non_queries``,
  Zoology's default; such a token may equal a key, an unlabelled distractor) or 0.

Labels follow transformers' convention (the model shifts them): ``labels[q_i + 1] = v_i`` and -100
elsewhere, so ``model(input_ids, labels=labels).loss`` is Zoology's loss and the answer to the query at
``q_i`` is ``logits[:, q_i].argmax(-1)``. Zoology's own labels are the same targets one position
earlier (``labels[q_i] = v_i``). The value is never written into ``input_ids[q_i + 1]``, which holds a
random token (or 0) as in Zoology. ``n = 2``, ``seq_len = 12``, ``r`` a random token:

    position:   0    1    2    3    4    5    6    7    8    9   10   11
    input_ids:  k1   v1   k2   v2   r    r    k1   r    r    r    k2   r
    labels:     -    -    -    -    -    -    -    v1   -    -    -    v2

The data are drawn with a local ``torch.Generator`` seeded by ``seed``: the same arguments give the same
tensors, but not the same numbers as Zoology's numpy generator.

JRT-Prompt for MQAR (``context_repeats=2``): the same rows with the key-value block ``k_1 v_1 ... k_n v_n``
written twice before the queries, so a recurrent model reads every pair a second time; rows grow by ``2n``
tokens per extra copy and the labels move with the queries. There is no question lead: the queries are the
questions, and they follow the context as in the plain rows.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
_ROWS_PER_DRAW = 1024  # rows sampled at once, bounding memory at _ROWS_PER_DRAW x (vocab_size // 2) floats


def _draw_without_replacement(
    weights: torch.Tensor, num_samples: int, num_rows: int, generator: torch.Generator
) -> torch.Tensor:
    """Indices into ``weights`` ``[N]``, drawn in order without replacement: ``[num_rows, num_samples]``."""
    return torch.cat([
        torch.multinomial(
            weights.expand(min(_ROWS_PER_DRAW, num_rows - start), -1), num_samples, generator=generator
        )
        for start in range(0, num_rows, _ROWS_PER_DRAW)
    ])


def mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    seed: int = 0,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    context_repeats: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR rows as in Zoology's ``multiquery_ar``, with transformers-style labels (see the module notes).

    Args:
        num_examples: number of rows.
        seq_len: tokens per row, even, at least ``4 * num_kv_pairs`` and at most ``vocab_size``.
        num_kv_pairs: key-value pairs per row; ``4 * num_kv_pairs <= seq_len <= vocab_size`` leaves enough
            distinct keys in ``[1, vocab_size // 2)``.
        vocab_size: token ids are in ``[0, vocab_size)``.
        seed: seed of the local generator.
        power_a: exponent of the power law over query gaps, > 0.
        random_non_queries: fill the positions that are neither pairs nor queries with random tokens
            instead of 0.
        context_repeats: copies of the key-value block before the queries (2 is JRT-Prompt); the rows are those
            of ``context_repeats=1`` with ``2 * num_kv_pairs * (context_repeats - 1)`` tokens inserted.

    Returns:
        ``input_ids`` and ``labels``, both ``[num_examples, seq_len + 2 * num_kv_pairs * (context_repeats - 1)]``
        int64; ``labels`` holds exactly
        ``num_kv_pairs`` values per row (at the position after each query) and -100 elsewhere.

    Raises:
        ValueError: for a size that is not a positive int, an odd ``seq_len``, ``seq_len > vocab_size``,
            ``4 * num_kv_pairs > seq_len``, ``power_a <= 0`` or a ``context_repeats`` that is not a positive int.
    """
    sizes = {"num_examples": num_examples, "seq_len": seq_len, "num_kv_pairs": num_kv_pairs, "vocab_size": vocab_size,
             "context_repeats": context_repeats}
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if seq_len % 2:
        raise ValueError(f"seq_len must be even (pairs and queries take two slots), got {seq_len}")
    if vocab_size < seq_len:
        raise ValueError(f"vocab_size must be at least seq_len={seq_len} (as in Zoology), got {vocab_size}")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(
            f"num_kv_pairs={num_kv_pairs} needs seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs} "
            f"(2 tokens per pair and a query region as long), got seq_len={seq_len}"
        )
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a!r}")

    generator = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    context = 2 * num_kv_pairs
    space = (seq_len - context) // 2
    rows = torch.arange(num_examples)[:, None]

    keys = 1 + _draw_without_replacement(torch.ones(half - 1), num_kv_pairs, num_examples, generator)
    values = half + _draw_without_replacement(torch.ones(vocab_size - half), num_kv_pairs, num_examples, generator)
    gaps = torch.arange(1, space + 1, dtype=torch.float64)
    gap_weights = power_a * gaps ** (power_a - 1)
    queries = context + 2 * _draw_without_replacement(gap_weights, num_kv_pairs, num_examples, generator)  # [N, n]

    if random_non_queries:
        input_ids = torch.randint(vocab_size, (num_examples, seq_len), generator=generator)
    else:
        input_ids = torch.zeros(num_examples, seq_len, dtype=torch.long)
    input_ids[:, 0:context:2] = keys
    input_ids[:, 1:context:2] = values
    input_ids[rows, queries] = keys
    labels = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.long)
    labels[rows, queries + 1] = values
    if context_repeats > 1:  # JRT-Prompt: the key-value block again, before the queries
        extra = input_ids[:, :context].repeat(1, context_repeats - 1)
        input_ids = torch.cat([input_ids[:, :context], extra, input_ids[:, context:]], dim=1)
        labels = torch.cat([labels[:, :context], torch.full_like(extra, IGNORE_INDEX), labels[:, context:]], dim=1)
    return input_ids, labels


MIXTURE_KEYS = ("num_examples", "seq_len", "num_kv_pairs", "power_a", "random_non_queries")


def mqar_mixture(configs: list[dict], vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR rows from several ``(seq_len, num_kv_pairs)`` configurations, as Zoology trains (its default training
    set mixes 64 tokens / 4 pairs, 128 / 8 and 256 / 16, 32, 64 so that the short rows teach the recall
    circuit early).

    Each config is a dict of :func:`mqar` arguments (``num_examples``, ``seq_len``, ``num_kv_pairs``, optionally
    ``power_a`` and ``random_non_queries``); config ``i`` is drawn with seed ``seed + i``. Shorter rows are
    right-padded to the longest ``seq_len`` with token 0 and label -100: a causal model's loss on a row does not
    depend on what follows it, so padding adds compute but changes no target.

    Returns:
        ``input_ids`` and ``labels``, both ``[sum of num_examples, max seq_len]`` int64, config after config
        (a training loader shuffles them).

    Raises:
        ValueError: for an empty list, a config that is not a dict, an unknown or missing key (naming the config's
            index), or any value :func:`mqar` rejects.
    """
    if not isinstance(configs, list) or not configs:
        raise ValueError(f"the MQAR mixture must be a non-empty list of configs, got {configs!r}")
    for index, config in enumerate(configs):
        if not isinstance(config, dict):
            raise ValueError(f"mixture[{index}] must be a dict of mqar arguments, got {config!r}")
        unknown = sorted(set(config) - set(MIXTURE_KEYS))
        missing = [key for key in MIXTURE_KEYS[:3] if key not in config]
        if unknown or missing:
            raise ValueError(f"mixture[{index}]={config!r}: unknown keys {unknown}, missing keys {missing}; "
                             f"allowed keys: {list(MIXTURE_KEYS)} (the first three are required)")
    parts = []
    for index, config in enumerate(configs):
        try:
            parts.append(mqar(vocab_size=vocab_size, seed=seed + index, **config))
        except ValueError as error:
            raise ValueError(f"mixture[{index}]={config!r}: {error}") from None
    width = max(ids.shape[1] for ids, _ in parts)

    def right_pad(rows: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(rows, (0, width - rows.shape[1]), value=value)

    return (torch.cat([right_pad(ids, 0) for ids, _ in parts]),
            torch.cat([right_pad(labels, IGNORE_INDEX) for _, labels in parts]))
