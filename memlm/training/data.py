"""Training data: documents from ``datasets`` packed into fixed-length rows, or synthetic task rows.

Packing: documents (each ended with EOS) are concatenated and cut into rows of ``seq_len`` tokens; a
document longer than the space left continues at the start of the next row, as a new segment. A
row remembers its segment lengths and which tokens carry the loss. The last, partial row is padded
(pad tokens form their own segment, with no loss), so no token is dropped. With
``data.completion_field`` a document is a prompt (``text_field``) and a completion, and only the
completion (with its EOS) carries the loss, as in supervised fine-tuning.

The collator returns the rows ``[B, seq_len]`` with ``position_ids`` restarting at every segment,
``cu_seq_lens_q`` (segment offsets in the rows read one after the other) and labels of -100 on each
segment's first token and on tokens without loss: attention sees block-diagonal masks, linear mixers
reset their state, and no token predicts across a document boundary. For a model trained with JRT-RNN's
prefix-LM objective it also returns each document's ``prefix_length``, the inputs with a fraction of the
prefix tokens masked, and ``mlm_labels`` (see :class:`PrefixLMInputs`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import IterableDataset, Sampler

from memlm.models.jrt_rnn import PrefixLMInputs, prompt_lengths
from memlm.tokenization import encode
from memlm.training.config import DataSection


def load_documents(data: DataSection, tokenizer=None) -> Iterable[str | tuple[str, str]]:
    """The text of each document (a ``(prompt, completion)`` pair with ``data.completion_field``): from
    ``datasets`` (streamed when ``data.streaming``), or generated needle-in-a-haystack documents (``niah``,
    lengths counted with ``tokenizer``)."""
    from datasets import load_dataset

    if data.source == "niah":
        from memlm.data import niah_grid

        return (example.document for example in niah_grid(tokenizer=tokenizer, **data.niah))

    if data.source == "hub":
        dataset = load_dataset(data.name, data.subset, split=data.split, streaming=data.streaming)
    else:
        files = [str(f) for f in data.files]
        builder = {"text": "text", "json": "json", "parquet": "parquet"}[data.source]
        dataset = load_dataset(builder, data_files=files, split="train", streaming=data.streaming)
    columns = dataset.column_names
    for name in ("text_field", "completion_field"):
        field = getattr(data, name)
        if columns is not None and field is not None and field not in columns:
            raise ValueError(f"data.{name}={field!r} is not a column of the data; columns: {columns}")
    if data.completion_field is not None:
        texts = ((row[data.text_field], row[data.completion_field]) for row in dataset)
    else:
        texts = (row[data.text_field] for row in dataset)
    return itertools.islice(texts, data.max_documents) if data.max_documents else texts


def pack_documents(
    documents: Iterable[list[int] | tuple[list[int], list[int]]], seq_len: int, pad_token_id: int
) -> Iterator[dict[str, list[int]]]:
    """Concatenate tokenized documents (token ids, or ``(ids, loss_mask)`` pairs) into rows of ``seq_len``.

    Yields ``{"input_ids": [seq_len], "loss_mask": [seq_len], "segment_lengths": [...], "pad_length": n}``:
    the segment lengths sum to ``seq_len``; the final row's trailing padding (``pad_length`` tokens, no loss)
    is its last segment. A document given as plain ids has the loss on every token.
    """
    row, mask, segments = [], [], []
    for document in documents:
        tokens, loss = document if isinstance(document, tuple) else (document, [1] * len(document))
        while tokens:
            room = seq_len - len(row)
            row.extend(tokens[:room])
            mask.extend(loss[:room])
            segments.append(len(tokens[:room]))
            tokens, loss = tokens[room:], loss[room:]
            if len(row) == seq_len:
                yield {"input_ids": row, "loss_mask": mask, "segment_lengths": segments, "pad_length": 0}
                row, mask, segments = [], [], []
    if row:
        pad = seq_len - len(row)
        yield {"input_ids": row + [pad_token_id] * pad, "loss_mask": mask + [0] * pad,
               "segment_lengths": segments + [pad], "pad_length": pad}


def tokenize_documents(documents: Iterable[str | tuple[str, str]], tokenizer) -> Iterator[tuple[list[int], list[int]]]:
    """``(token ids, loss mask)`` of each document followed by the tokenizer's EOS; for a ``(prompt,
    completion)`` pair the two are tokenized apart and only the completion and the EOS carry the loss."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer ({type(tokenizer).__name__}) has no eos_token: documents need a separator")
    for document in documents:
        prompt, completion = document if isinstance(document, tuple) else ("", document)
        prompt_ids = encode(tokenizer, prompt) if prompt else []
        completion_ids = encode(tokenizer, completion) + [tokenizer.eos_token_id]
        yield prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


class PackedCollator:
    """Batch of rows -> model inputs.

    Packed rows (with ``segment_lengths``) become ``[B, seq_len]`` ``input_ids`` with ``position_ids``
    restarting at every document, boundary-masked ``labels``, and ``cu_seq_lens_q``: the document offsets in
    the rows read one after the other (no document crosses a row). Attention then costs ``B x seq_len^2``,
    not ``(B x seq_len)^2``; linear and memory layers read the rows as one packed sequence. Rows that bring
    their own ``labels`` (synthetic tasks) are stacked as ``[B, seq_len]``. With ``prefix_lm``, the batch
    also carries the prefix-LM inputs (:class:`PrefixLMInputs`); the trailing padding is no prefix.
    """

    def __init__(self, prefix_lm: PrefixLMInputs | None = None):
        self.prefix_lm = prefix_lm

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if "labels" in rows[0]:
            batch = {
                "input_ids": torch.stack([torch.as_tensor(r["input_ids"]) for r in rows]),
                "labels": torch.stack([torch.as_tensor(r["labels"]) for r in rows]),
            }
            return self.prefix_lm.apply(batch, prompt_lengths(batch["labels"])) if self.prefix_lm else batch
        input_ids = torch.tensor([t for r in rows for t in r["input_ids"]])
        labels = input_ids.clone()
        lengths = [n for r in rows for n in r["segment_lengths"] if n > 0]
        starts = torch.tensor([0, *itertools.accumulate(lengths)])
        labels[starts[:-1]] = -100  # the first token of a segment is not predicted from the previous one
        position_ids = torch.arange(len(input_ids)) - torch.repeat_interleave(starts[:-1], torch.tensor(lengths))
        labels[torch.tensor([m for r in rows for m in r["loss_mask"]]) == 0] = -100  # prompts and padding
        shape = (len(rows), -1)
        batch = {
            "input_ids": input_ids.view(shape),
            "labels": labels.view(shape),
            "position_ids": position_ids.view(shape),
            "cu_seq_lens_q": starts,
        }
        return self.prefix_lm.apply(batch, self._prompt_lengths(rows)) if self.prefix_lm else batch

    @staticmethod
    def _prompt_lengths(rows: list[dict]) -> torch.Tensor:
        """``[N]``: per segment, its leading tokens without loss (0 for the trailing padding)."""
        lengths = []
        for row in rows:
            segments = [n for n in row["segment_lengths"] if n > 0]
            starts = itertools.accumulate(segments, initial=0)  # one more than segments: the end
            for index, (start, length) in enumerate(zip(starts, segments, strict=False)):
                padding = index == len(segments) - 1 and row.get("pad_length", 0) == length
                mask = row["loss_mask"][start:start + length]
                lengths.append(0 if padding else next((i for i, m in enumerate(mask) if m), length))
        return torch.tensor(lengths)


class EpochSampler(Sampler[int]):
    """A permutation of ``range(size)`` that depends only on ``(seed, epoch)``: an exact resume replays it."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class PackedStream(IterableDataset):
    """Packed rows read lazily from a (streamed) text source, in order, repeating at the end.

    For corpora too large to pack in memory (``data.streaming: true``). Resuming replays the stream
    up to the step reached, which is exact because the order never changes.
    """

    def __init__(self, data: DataSection, tokenizer):
        self.data, self.tokenizer = data, tokenizer

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        while True:
            rows = pack_documents(tokenize_documents(load_documents(self.data, self.tokenizer), self.tokenizer),
                                  self.data.seq_len, self.tokenizer.pad_token_id)
            empty = True
            for row in rows:
                empty = False
                yield row
            if empty:
                raise ValueError("the data holds no documents")
