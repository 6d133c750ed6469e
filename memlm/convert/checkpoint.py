"""A source checkpoint on disk (or fetched from the hub): its ``config.json``, its safetensors, its other files.

memlm never unpickles: a checkpoint whose weights exist only as ``*.bin`` / ``*.pt`` / ``*.pth`` files is
refused, naming them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from memlm.convert.registry import ConversionError

# What the converters need from a hub repository: configs, weights, tokenizer and generation files.
HUB_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja")
# The files copied next to a converted checkpoint: the tokenizer's and the generation config.
EXTRA_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "*.model", "*.tiktoken", "chat_template*", "generation_config.json",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX = "model.safetensors.index.json"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Checkpoint:
    """``directory``: where the files are; ``config``: its ``config.json`` (JSON, read once)."""

    directory: Path
    config: dict

    @classmethod
    def open(cls, source: str | os.PathLike, revision: str | None = None) -> Checkpoint:
        """A local directory, or a hub name (``"Qwen/Qwen3.5-0.8B"``: its configs, safetensors and tokenizer files,
        through ``huggingface_hub.snapshot_download``). ConversionError when the directory, its ``config.json`` or
        its safetensors are missing."""
        path = Path(source)
        if path.exists():
            if not path.is_dir():
                raise ConversionError(f"{source}: not a directory (a checkpoint is a directory with config.json)")
            if revision is not None:
                raise ConversionError(f"revision={revision!r} is for hub names; {source} is a local directory")
        elif _HUB_NAME.match(str(source)) and not str(source).startswith("."):
            path = _download(str(source), revision)
        else:
            raise ConversionError(f"{source}: no such directory (nor a hub name: 'owner/name')")
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConversionError(f"{config_path}: missing (a checkpoint directory has a config.json)")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConversionError(f"{config_path}: not valid JSON ({error})") from error
        if not isinstance(config, dict):
            raise ConversionError(f"{config_path}: a JSON object expected, got {type(config).__name__}")
        checkpoint = cls(path, config)
        checkpoint.weight_files()  # refuse a checkpoint without safetensors now, before any work
        return checkpoint

    def weight_files(self) -> list[Path]:
        """The safetensors files: those ``model.safetensors.index.json`` names, else every ``*.safetensors``."""
        index = self.directory / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConversionError(f"{index}: no readable weight_map ({error!r})") from error
            files = [self.directory / name for name in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConversionError(f"{index} names shards that are missing: {missing}")
            return files
        files = sorted(self.directory.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(p.name for p in self.directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ConversionError(f"{self.directory}: weights only as {pickles}; memlm reads safetensors only (it "
                                  "never unpickles a file): convert them to safetensors first")
        raise ConversionError(f"{self.directory}: no weights (no *.safetensors file)")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of every safetensors file, by name, in its stored dtype, on the CPU."""
        tensors: dict[str, torch.Tensor] = {}
        for file in self.weight_files():
            try:
                shard = load_file(file)
            except (SafetensorError, OSError) as error:
                raise ConversionError(f"{file}: not a readable safetensors file ({error})") from error
            repeated = sorted(set(shard) & set(tensors))
            if repeated:
                raise ConversionError(f"{file}: tensors {repeated[:5]} also appear in another shard")
            tensors.update(shard)
        return tensors

    def extra_files(self) -> list[Path]:
        """The tokenizer and generation config files to copy next to a converted checkpoint."""
        return sorted({p for pattern in EXTRA_PATTERNS for p in self.directory.glob(pattern) if p.is_file()})


def _download(name: str, revision: str | None) -> Path:
    """``snapshot_download`` of the files :data:`HUB_PATTERNS` names (never a pickle)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=list(HUB_PATTERNS)))
    except (OSError, ValueError) as error:  # huggingface_hub's errors: HTTP, offline, not found, a bad name
        raise ConversionError(f"{name}: not a local directory, and the hub gave no snapshot of it ({error})") from error
