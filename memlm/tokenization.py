"""Tokenizers that need no hub: byte-level, trained byte-level BPE, and integer ids for synthetic tasks.

Every builder returns a ``transformers.PreTrainedTokenizerFast`` backed by the ``tokenizers`` library, so
``save_pretrained(dir)`` and ``AutoTokenizer.from_pretrained(dir)`` work offline and the tokenizer can be
saved next to a model. Vocabulary layouts:

    byte_level_tokenizer   0..255 the UTF-8 bytes, 256 <|pad|>, 257 <|bos|>, 258 <|eos|>  (BYTE_VOCAB_SIZE = 259)
    train_bpe_tokenizer    the special tokens first (default 0 <|pad|>, 1 <|bos|>, 2 <|eos|>), then the 256
                           byte symbols, then the learned merges; at most ``vocab_size`` ids in all
    integer_tokenizer(V)   0..V-1 the integers ("i" has id i), V <|pad|>, V+1 <|eos|>  (a model needs V + 2 ids)

No builder adds special tokens when encoding: ``tokenizer(text)`` returns the text's tokens only, and the
training pipeline puts ``eos_token_id`` between documents itself. Set ``tokenizer.add_bos_token = True`` (or
``add_eos_token``) to change that. The special token strings written in a text encode as their special ids.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
NUM_BYTES = 256
BYTE_VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS)
"""Ids of :func:`byte_level_tokenizer`: 256 bytes, then ``<|pad|>``, ``<|bos|>``, ``<|eos|>``."""


def byte_level_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte: byte ``b`` has id ``b``, then ``<|pad|>`` 256, ``<|bos|>`` 257, ``<|eos|>`` 258.

    Lossless for any unicode text (``decode(encode(text)) == text``), with no merges and no unknown token.
    Decoding ids that are not whole UTF-8 characters gives the replacement character U+FFFD.

    Args:
        model_max_length: the longest input a model takes, in tokens; None means no limit.
    """
    _check_max_length(model_max_length)
    byte_symbols = _byte_symbols()
    backend = Tokenizer(models.BPE(vocab={symbol: b for b, symbol in enumerate(byte_symbols)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return _wrap(backend, model_max_length, bos_token=BOS_TOKEN)


def train_bpe_tokenizer(
    files: str | os.PathLike | Sequence[str | os.PathLike] | None,
    vocab_size: int,
    *,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    model_max_length: int | None = None,
    texts: str | Iterable[str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on local text.

    The 256 byte symbols are always in the vocabulary, so any text encodes without an unknown token and
    ``decode(encode(text)) == text``. Ids: ``special_tokens`` in order from 0, the byte symbols, then the
    merges; ``len(tokenizer) <= vocab_size`` (fewer when the text has too few pairs of ``min_frequency``).

    Args:
        files: text file paths to train on, or None to train on ``texts``.
        vocab_size: total number of ids, special tokens included; more than ``256 + len(special_tokens)``.
        min_frequency: a pair is merged only if it occurs at least this often.
        special_tokens: must hold ``<|pad|>``, ``<|bos|>`` and ``<|eos|>``; any others become
            ``extra_special_tokens``.
        model_max_length: the longest input a model takes, in tokens; None means no limit.
        texts: strings to train on instead of ``files`` (an iterator is read once).

    Raises:
        FileNotFoundError: for a path in ``files`` that is not a file.
        ValueError: for both or neither of ``files`` and ``texts``, no files, a ``vocab_size`` with no room for
            merges, or special tokens that are duplicated or lack pad, bos or eos.
    """
    _check_positive_int("vocab_size", vocab_size)
    _check_positive_int("min_frequency", min_frequency)
    _check_max_length(model_max_length)
    special_tokens = list(special_tokens)
    missing = [token for token in SPECIAL_TOKENS if token not in special_tokens]
    if missing or len(set(special_tokens)) != len(special_tokens):
        raise ValueError(
            f"special_tokens must hold each of {list(SPECIAL_TOKENS)} and no duplicates, got {special_tokens}"
        )
    if vocab_size <= NUM_BYTES + len(special_tokens):
        raise ValueError(
            f"vocab_size must be larger than the {NUM_BYTES} byte symbols + {len(special_tokens)} special tokens "
            f"= {NUM_BYTES + len(special_tokens)} to leave room for merges, got {vocab_size}"
        )
    if (files is None) == (texts is None):
        raise ValueError(
            f"pass exactly one of files (text file paths) or texts (strings), got files={files!r} and "
            f"texts={'None' if texts is None else type(texts).__name__}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if texts is not None:
        backend.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer=trainer)
    else:
        paths = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not paths:
            raise ValueError("files must name at least one text file, got an empty list")
        for path in paths:
            if not Path(path).is_file():
                raise FileNotFoundError(f"files: no such text file {str(path)!r}")
        backend.train([str(path) for path in paths], trainer=trainer)
    extra = [token for token in special_tokens if token not in SPECIAL_TOKENS]
    return _wrap(backend, model_max_length, bos_token=BOS_TOKEN, extra_special_tokens=extra)


def integer_tokenizer(vocab_size: int, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Whitespace-separated integers for synthetic token-id tasks (MQAR and the like).

    ``"12 7 300"`` encodes to ``[12, 7, 300]`` and ids decode to space-separated integers. Ids ``0..V-1`` are
    the integers, ``<|pad|>`` is ``V`` and ``<|eos|>`` is ``V + 1``, so a model using it needs a
    ``vocab_size`` of at least ``V + 2`` (``len(tokenizer)``). There is no bos and no unknown token: a word
    that is not an integer in ``[0, V)`` fails to encode: the ``tokenizers`` backend raises "Missing [UNK] token",
    and :func:`encode` (which memlm's training data goes through) raises a ``ValueError`` naming the word.

    Args:
        vocab_size: ``V``, the number of integer tokens.
        model_max_length: the longest input a model takes, in tokens; None means no limit.
    """
    _check_positive_int("vocab_size", vocab_size)
    _check_max_length(model_max_length)
    backend = Tokenizer(models.WordLevel(vocab={str(i): i for i in range(vocab_size)}))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([PAD_TOKEN, EOS_TOKEN])
    return _wrap(backend, model_max_length, bos_token=None)


def encode(tokenizer, text: str) -> list[int]:
    """``tokenizer(text, add_special_tokens=False)["input_ids"]``, with a clear ``ValueError`` where a tokenizer
    without an unknown token meets a word outside its vocabulary (:func:`integer_tokenizer`: anything but an
    integer in ``[0, V)``), instead of the backend's "WordLevel error: Missing [UNK] token"."""
    try:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception as error:  # the tokenizers backend raises a bare Exception
        if "Missing [UNK] token" not in str(error):
            raise
        vocab = tokenizer.get_vocab()
        word = next((w for w in text.split() if w not in vocab), None)
        integers = sum(key.isdigit() for key in vocab)
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(
            f"the tokenizer cannot encode the word {word!r} in the text {shown!r}: it is not in the vocabulary and "
            f"the tokenizer has no unknown token (the integer tokenizer encodes only whitespace-separated integers "
            f"from 0 to {integers - 1})"
        ) from error


def _byte_symbols() -> list[str]:
    """The printable character that ``ByteLevel`` (GPT-2's ``bytes_to_unicode``) maps each byte to, by byte."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = iter(range(NUM_BYTES, 2 * NUM_BYTES))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(NUM_BYTES)]


def _wrap(
    backend: Tokenizer, model_max_length: int | None, bos_token: str | None, extra_special_tokens: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer around ``backend``, which already holds the special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=bos_token,
        eos_token=EOS_TOKEN,
        extra_special_tokens=list(extra_special_tokens),
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_max_length(model_max_length: int | None) -> None:
    if model_max_length is not None:
        _check_positive_int("model_max_length", model_max_length)
