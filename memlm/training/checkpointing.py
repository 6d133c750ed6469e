"""Training checkpoints without pickle: safetensors and JSON only, written atomically, checked before loading.

A checkpoint ``output_dir/checkpoints/step_N/`` holds::

    model.safetensors                      the whole model's state dict (gathered on the main process
                                           when FSDP shards it)
    optimizer.safetensors, optimizer.json  the optimizer's tensors (``"<parameter>/<state>"``) and its
                                           param_groups and non-tensor state, keyed by parameter name
    trainer.json                           the optimizer step and the learning-rate scheduler's state
    rng_<rank>.safetensors, rng_<rank>.json  each process's torch (CPU, CUDA) and python/numpy RNG states
    manifest.json                          written last: step, process count, recipe, each file's size and sha256

It is written into ``step_N.partial`` and renamed to ``step_N`` once the manifest is written, so a run
killed while saving leaves no ``step_N``. Loading checks the manifest (every file present, of its size and
sha256) before reading anything; nothing is ever unpickled, whatever files a directory holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

FORMAT = 1
MANIFEST = "manifest.json"
PARTIAL = ".partial"
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, damaged, or from another recipe or process count."""


def checkpoint_dirs(output_dir: Path, partial: bool = False) -> list[tuple[int, Path]]:
    """``(step, directory)`` of a run's complete checkpoints (with ``partial``: its unfinished
    ``step_N.partial`` ones instead), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        name = path.name.removesuffix(PARTIAL) if partial and path.name.endswith(PARTIAL) else path.name
        match = CHECKPOINT_PATTERN.fullmatch(name)
        if match and path.is_dir() and (name != path.name) == partial:
            found.append((int(match[1]), path))
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``save_file`` of CPU copies; tensors sharing memory (tied weights) are saved as separate copies."""
    seen, plain = set(), {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[name] = tensor
    save_file(plain, str(path))


def verify(directory: Path) -> dict:
    """The manifest of checkpoint ``directory`` once every file it lists is present with its size and
    sha256; :class:`CheckpointError` naming the file and the checkpoint otherwise."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: it has no {MANIFEST} (written last)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {directory}: {manifest_path} is damaged ({error})") from error
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory} has format {manifest.get('format')!r}; memlm reads {FORMAT}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory}: file {path} is missing")
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {directory}: file {path} is damaged (its size or sha256 differs "
                                  "from the manifest)")
    return manifest


def latest_intact(output_dir: Path) -> Path | None:
    """The newest checkpoint of ``output_dir`` that :func:`verify` accepts; each newer incomplete or
    damaged one is skipped with a warning naming it."""
    candidates = checkpoint_dirs(output_dir) + checkpoint_dirs(output_dir, partial=True)
    for _, directory in sorted(candidates, reverse=True):
        if directory.name.endswith(PARTIAL):
            warnings.warn(f"skipping incomplete checkpoint {directory} (its run stopped while writing it)",
                          stacklevel=2)
            continue
        try:
            verify(directory)
        except CheckpointError as error:
            warnings.warn(f"skipping checkpoint {directory}: {error}", stacklevel=2)
            continue
        return directory
    return None


def save_checkpoint(accelerator, directory: Path, model, optimizer, scheduler, step: int, recipe: dict) -> None:
    """Write the checkpoint of ``step`` to ``directory`` (all processes call this; see the module docstring).

    ``model`` and ``optimizer`` are the prepared ones; their full state dicts are gathered onto the main
    process (``torch.distributed.checkpoint.state_dict.get_state_dict``), which writes them.
    """
    directory = Path(directory)
    partial = directory.with_name(directory.name + PARTIAL)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, _inner(optimizer), options=options)
    rank = accelerator.process_index
    _save_rng(partial, rank)
    if accelerator.is_main_process:
        _save_tensors(partial / "model.safetensors", model_state)
        tensors, structure = _split_optimizer_state(optimizer_state)
        _save_tensors(partial / "optimizer.safetensors", tensors)
        _write_json(partial / "optimizer.json", structure)
        _write_json(partial / "trainer.json", {"step": step, "scheduler": scheduler.state_dict()})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(partial.iterdir())}
        manifest = {"format": FORMAT, "step": step, "num_processes": accelerator.num_processes, "recipe": recipe,
                    "files": files}
        _write_json(partial / MANIFEST, manifest)
        _fsync_dir(partial)
        if directory.exists():  # a checkpoint of the same step (a run resumed from an earlier one)
            stale = directory.with_name(directory.name + ".replaced")
            shutil.rmtree(stale, ignore_errors=True)
            directory.rename(stale)
            partial.rename(directory)
            shutil.rmtree(stale)
        else:
            partial.rename(directory)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, directory: Path, model, optimizer, scheduler, manifest: dict) -> int:
    """Restore model, optimizer, scheduler and this process's RNG states from checkpoint ``directory``
    whose ``manifest`` :func:`verify` returned; return its step."""
    directory = Path(directory)
    if manifest["num_processes"] != accelerator.num_processes:
        raise CheckpointError(f"checkpoint {directory} was saved by {manifest['num_processes']} processes; "
                              f"resume it with the same number (this run has {accelerator.num_processes})")
    model_state = _load_tensors(directory, "model.safetensors")
    optimizer_state = _join_optimizer_state(_load_tensors(directory, "optimizer.safetensors"),
                                            _load_json(directory, "optimizer.json"))
    set_state_dict(model, _inner(optimizer), model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))
    trainer_state = _load_json(directory, "trainer.json")
    scheduler.load_state_dict(trainer_state["scheduler"])
    _load_rng(directory, accelerator.process_index)
    return int(trainer_state["step"])


def _inner(optimizer):
    """The torch optimizer under Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def _fsync_dir(directory: Path) -> None:
    """Flush the files of ``directory`` to disk before it is renamed into place."""
    for path in directory.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())


def _load_tensors(directory: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(directory / name))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"checkpoint {directory}: file {directory / name} cannot be read ({error})") from error


def _load_json(directory: Path, name: str):
    try:
        return json.loads((directory / name).read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: file {directory / name} cannot be read ({error})") from error


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict keyed by parameter name -> (tensors, JSON-able rest)."""
    tensors, other = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{param}/{key}"] = value
            else:
                other.setdefault(param, {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": other}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """The inverse of :func:`_split_optimizer_state` (JSON lists in param_groups, e.g. ``betas``, back to tuples)."""
    state = {param: dict(values) for param, values in structure["state"].items()}
    for name, tensor in tensors.items():
        param, key = name.rsplit("/", 1)
        state.setdefault(param, {})[key] = tensor
    groups = [{key: tuple(value) if isinstance(value, list) and key != "params" else value
               for key, value in group.items()} for group in structure["param_groups"]]
    return {"state": state, "param_groups": groups}


def _save_rng(directory: Path, rank: int) -> None:
    """This process's RNG states: torch's as tensors, python's and numpy's as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, str(directory / f"rng_{rank}.safetensors"))
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    _write_json(directory / f"rng_{rank}.json", {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    })


def _load_rng(directory: Path, rank: int) -> None:
    tensors = _load_tensors(directory, f"rng_{rank}.safetensors")
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    states = _load_json(directory, f"rng_{rank}.json")
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
