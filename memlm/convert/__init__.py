"""Import pretrained hybrids into memlm, and export memlm models to other formats.

    model = memlm.convert.from_pretrained("Qwen/Qwen3.5-0.8B", drop=("vision", "mtp"))
    memlm.convert.convert("Qwen/Qwen3.5-0.8B", "runs/qwen3_5_0_8b", drop=("vision", "mtp"))   # a memlm checkpoint
    memlm.convert.convert("runs/my_hybrid", "runs/my_hybrid_qwen", to="qwen3_5")                # a Qwen3.5 one

Every check (the destination, the source's files, every config field) runs before any tensor is read, and
nothing is written unless the whole conversion succeeds (the destination appears complete or not at all).
The families, what maps to what, and the choices: docs/guides/convert.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from memlm.convert import (  # noqa: F401  (registers importers, exporters)
    fla,
    kimi_linear,
    mamba2_hybrids,
    memlm_format,
    olmo_hybrid,
    qwen3_5,
    qwen3_next,
)
from memlm.convert.checkpoint import Checkpoint
from memlm.convert.registry import (
    DROP_FLAGS,
    EXPORTERS,
    IMPORTERS,
    ConversionError,
    Exporter,
    Importer,
    check_drop,
    exporter_for,
    importer_for,
    register_exporter,
    register_importer,
)
from memlm.files import atomic_directory
from memlm.models.configuration_memlm import MemLMConfig
from memlm.models.modeling_memlm import MemLMForCausalLM

__all__ = [
    "DROP_FLAGS", "EXPORTERS", "IMPORTERS", "Checkpoint", "ConversionError", "Conversion", "Exporter", "Importer",
    "convert", "from_pretrained", "register_exporter", "register_importer",
]


@dataclass
class Conversion:
    """What :func:`convert` wrote: ``source_type`` (the source's ``model_type``), ``target`` (``"memlm"`` or the
    export format), the ``destination`` directory, the model's ``mixer_types`` and ``num_parameters``."""

    source_type: str
    target: str
    destination: Path
    mixer_types: list[str]
    num_parameters: int

    def summary(self) -> str:
        counts = ", ".join(f"{n} {mixer}" for mixer, n in Counter(self.mixer_types).items())
        return (f"{self.source_type} -> {self.target}: {len(self.mixer_types)} layers ({counts}), "
                f"{self.num_parameters / 1e6:.1f}M parameters, written to {self.destination}")


def from_pretrained(
    source: str | os.PathLike, *, drop=(), revision: str | None = None, torch_dtype: torch.dtype | None = None
) -> MemLMForCausalLM:
    """A :class:`~memlm.MemLMForCausalLM` (eval mode) with the weights of ``source`` (a local directory or a hub
    name). ``drop``: parts memlm cannot represent that do not change the language model, dropped by explicit
    opt-in (:data:`DROP_FLAGS`: ``"vision"``, ``"mtp"``). ``torch_dtype``: default the dtype the source stores
    most of its weights in."""
    checkpoint, importer, config, drop = _read_source(source, drop, revision)
    return _load_model(source, checkpoint, importer, config, drop, torch_dtype)


def convert(
    source: str | os.PathLike, destination: str | os.PathLike, *, to: str | None = None, drop=(),
    overwrite: bool = False, revision: str | None = None, torch_dtype: torch.dtype | None = None,
) -> Conversion:
    """Write ``source`` as a memlm checkpoint (``to=None``) or in an export format (``to="qwen3_5"``) into
    ``destination``, with the source's tokenizer and generation config files. A non-empty ``destination`` is
    refused unless ``overwrite``. Everything is checked before any tensor is read; the destination is written
    into a temporary directory beside it and renamed when complete."""
    destination = Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ConversionError(f"destination {destination}: exists and is not a directory")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise ConversionError(f"destination {destination}: exists and is not empty (pass overwrite=True, "
                              "--overwrite, to replace it)")
    exporter = None if to is None else exporter_for(to)
    checkpoint, importer, config, drop = _read_source(source, drop, revision)
    target_config = None if exporter is None else exporter.config(config)
    model = _load_model(source, checkpoint, importer, config, drop, torch_dtype)

    def write(directory: Path) -> None:
        if exporter is None:
            model.save_pretrained(directory)
        else:
            _write_export(directory, exporter, target_config, model)
        for file in checkpoint.extra_files():
            shutil.copy2(file, directory / file.name)

    atomic_directory(destination, write, overwrite=overwrite)
    return Conversion(checkpoint.config.get("model_type"), to or "memlm", destination, list(config.mixer_types),
                      model.num_parameters())


def _read_source(source, drop, revision) -> tuple[Checkpoint, Importer, MemLMConfig, frozenset[str]]:
    """Open ``source`` and build the memlm config from its ``config.json`` alone (no tensor read)."""
    drop = check_drop(drop)
    checkpoint = Checkpoint.open(source, revision)
    importer = importer_for(checkpoint.config, str(source))
    return checkpoint, importer, importer.config(checkpoint, drop), drop


def _load_model(source, checkpoint, importer, config, drop, torch_dtype) -> MemLMForCausalLM:
    """Read the tensors, map them (every source tensor used, or under a dropped part's prefix), load them into a
    new model with ``strict=True``."""
    tensors = checkpoint.tensors()
    dtype = torch_dtype or _stored_dtype(tensors)
    state = importer.weights(checkpoint, config, tensors)
    dropped = tuple(prefix for flag in sorted(drop) for prefix in importer.droppable.get(flag, ()))
    left = sorted(name for name in tensors if not name.startswith(dropped))
    if left:
        raise ConversionError(f"{source}: {len(left)} source tensors have no place in memlm's model (nothing is "
                              f"dropped silently): {left[:8]}{' ...' if len(left) > 8 else ''}")
    if config.tie_word_embeddings and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    # built as transformers builds a model in a dtype: parameters in `dtype`, RoPE's frequencies in fp32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConversionError(f"{source}: the converted weights do not fit the model: {error}") from error
    return model.eval()


def _stored_dtype(tensors: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype holding most of the source's parameters."""
    sizes = Counter()
    for tensor in tensors.values():
        if tensor.is_floating_point():
            sizes[tensor.dtype] += tensor.numel()
    return sizes.most_common(1)[0][0] if sizes else torch.float32


def _write_export(directory: Path, exporter: Exporter, target_config: dict, model: MemLMForCausalLM) -> None:
    """The export format's ``config.json`` and ``model.safetensors`` (and the model's generation config)."""
    state = exporter.weights(model.config, model.state_dict())
    target_config = {**target_config, "dtype": str(model.dtype).removeprefix("torch.")}
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, directory / "model.safetensors",
              metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(target_config, indent=2, sort_keys=True) + "\n")
    model.generation_config.save_pretrained(directory)
