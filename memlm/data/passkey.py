"""Passkey retrieval (the long-context test of Titans and of "Landmark Attention", arXiv 2305.16300) in ids.

A row is a haystack of filler with one needle, ``MARK k_1 .. k_n``, at a chosen depth, then ``QUERY`` and
the key again; only the key after ``QUERY`` is scored. Ids: 0 pad, 1 ``MARK``, 2 ``QUERY``, ``3 .. 12`` the
ten digits of the key, ``13 .. vocab_size - 1`` filler. The filler is one fixed "sentence" of
``filler_length`` tokens repeated, as RULER's repeated-sentence haystack, so the key is the only thing to
remember. ``n = 3``, ``seq_len = 16``, ``f`` filler:

    input_ids:  f f f f f MARK 7 4 9 f f f QUERY 7 4 9
    labels:     -  ...                        -  7 4 9     (transformers' convention: labels[t] is
                                                            predicted at t - 1)

Drawn with a local ``torch.Generator`` seeded by ``seed``: the same arguments give the same tensors.
"""

from __future__ import annotations

import torch

from memlm.data.mqar import IGNORE_INDEX

MARK, QUERY, FIRST_DIGIT, FIRST_FILLER = 1, 2, 3, 13


def passkey(
    num_examples: int,
    seq_len: int,
    vocab_size: int = 64,
    key_length: int = 5,
    depth: float | None = None,
    filler_length: int = 23,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Passkey rows ``(input_ids, labels)``, both ``[num_examples, seq_len]`` long tensors.

    Args:
        num_examples: rows.
        seq_len: tokens per row, at least ``2 * key_length + 3``.
        vocab_size: at least 14 (one filler id); the filler sentence uses ids ``13 ..``.
        key_length: digits of the key.
        depth: where the needle starts, as a fraction of the haystack (0 = first token); None draws it
            uniformly per row.
        filler_length: tokens of the repeated filler sentence (fixed by the seed-independent generator, so
            training and evaluation rows share it).
        seed: seed of the keys and depths.

    Raises:
        ValueError: naming the argument, for sizes that cannot hold a row or a depth outside [0, 1].
    """
    for name, value in (("num_examples", num_examples), ("seq_len", seq_len), ("key_length", key_length),
                        ("filler_length", filler_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if seq_len < 2 * key_length + 3:
        raise ValueError(f"seq_len={seq_len} cannot hold the needle and the query: needs >= {2 * key_length + 3}")
    if vocab_size <= FIRST_FILLER:
        raise ValueError(f"vocab_size={vocab_size}: needs > {FIRST_FILLER} (ids 0-12 are pad, marks and digits)")
    if depth is not None and not 0 <= depth <= 1:
        raise ValueError(f"depth={depth!r} must lie in [0, 1]")
    sentence = torch.randint(FIRST_FILLER, vocab_size, (filler_length,), generator=torch.Generator().manual_seed(7))
    num_filler = seq_len - 2 * key_length - 2  # the row less the needle (MARK + key) and the query (QUERY + key)
    filler = sentence.repeat(num_filler // filler_length + 1)[:num_filler]
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, 10, (num_examples, key_length), generator=generator) + FIRST_DIGIT
    if depth is None:  # the needle starts after 0 .. num_filler filler tokens
        starts = torch.randint(0, num_filler + 1, (num_examples,), generator=generator)
    else:
        starts = torch.full((num_examples,), round(depth * num_filler), dtype=torch.long)
    input_ids = torch.empty(num_examples, seq_len, dtype=torch.long)
    labels = torch.full((num_examples, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row in range(num_examples):
        start = int(starts[row])
        needle = torch.cat([torch.tensor([MARK]), keys[row]])
        context = torch.cat([filler[:start], needle, filler[start:]])
        input_ids[row] = torch.cat([context, torch.tensor([QUERY]), keys[row]])
        labels[row, -key_length:] = keys[row]
    return input_ids, labels
