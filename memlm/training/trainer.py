"""The training loop of ``recipes/train.py``, on Accelerate: one CPU, DDP or FSDP2 unchanged.

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``batch_size`` rows per process.
The data order depends only on ``(train.seed, epoch)``, and the checkpoint holds the step, so a run
stopped and resumed replays exactly the batches, learning rates and losses of an uninterrupted one.
Checkpoints are memlm's own (safetensors and JSON, see :mod:`memlm.training.checkpointing`); the recipe
of the run is kept in ``output_dir/recipe.json`` so that no other run reuses or prunes its directory.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, GradientAccumulationPlugin, broadcast, set_seed
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from memlm.files import atomic_write_text
from memlm.models.jrt_rnn import PrefixLMInputs
from memlm.training.builders import build_dataset, build_model, build_tokenizer, run_evaluations
from memlm.training.checkpointing import (
    CheckpointError,
    checkpoint_dirs,
    latest_intact,
    load_checkpoint,
    save_checkpoint,
    verify,
)
from memlm.training.config import RecipeConfig, ScheduleSection
from memlm.training.data import EpochSampler, PackedCollator

RECIPE_FILE = "recipe.json"
# What a resumed run may change: how long it trains, its checkpoints, logging and evaluation.
RESUMABLE_CHANGES = ("output_dir", "train.max_steps", "train.max_minutes", "train.log_every", "checkpoint.",
                     "logging.", "eval.")


def lr_factor(step: int, schedule: ScheduleSection, total: int) -> float:
    """Multiplier of the learning rate at ``step`` of ``total``: linear warmup, then cosine/linear decay to
    ``min_lr_ratio``."""
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    if schedule.kind == "constant":
        return 1.0
    progress = min(1.0, (step - schedule.warmup_steps) / max(1, total - schedule.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule.kind == "cosine" else 1 - progress
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * decay


def available_trackers(names: list[str]) -> list[str]:
    """The requested Accelerate trackers that are installed (the others are reported and skipped)."""
    import importlib.util

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    usable = []
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"logging.trackers: unknown tracker {name!r}; known: {sorted(LOGGER_TYPE_TO_CLASS)}")
        if importlib.util.find_spec(name) is None:
            print(f"[memlm] tracker {name!r} is not installed: skipped")
        else:
            usable.append(name)
    return usable


def _recipe_differences(stored: dict, recipe: dict, allowed: tuple[str, ...]) -> list[str]:
    """The dotted keys whose values differ between two recipes (``to_dict`` form), but for ``allowed``
    (keys, or prefixes ending with a dot)."""
    old, new = _flat(stored), _flat(recipe)
    return sorted(key for key in old.keys() | new.keys()
                  if old.get(key) != new.get(key) and not any(key == a or key.startswith(a) for a in allowed))


def check_output_dir(config, overwrite: bool, resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    """Refuse an ``output_dir`` that holds something other than this run, unless ``overwrite``.

    Allowed: an empty or new directory; a run of the same recipe (``recipe.json``), which a resumed run
    continues (it may change only ``resumable``: keys, or prefixes ending with a dot) and a new run replaces.
    ``config``: a recipe with ``output_dir``, ``checkpoint`` and ``to_dict`` (this module's, or distillation's).
    """
    output_dir, resume = Path(config.output_dir), config.checkpoint.resume_from
    if overwrite and resume is not None:
        raise ValueError(f"overwrite=True (--overwrite) starts a new run in output_dir; it cannot resume "
                         f"(checkpoint.resume_from={resume!r}): drop one of them")
    if overwrite or not output_dir.is_dir() or not any(output_dir.iterdir()):
        return
    stored_path = output_dir / RECIPE_FILE
    if not stored_path.is_file():
        raise ValueError(f"output_dir={str(output_dir)!r} is not empty and holds no memlm run ({RECIPE_FILE}): "
                         "choose another output_dir, or pass --overwrite (train(..., overwrite=True)) to use it")
    allowed = resumable if resume is not None else ("checkpoint.resume_from",)
    differences = _recipe_differences(json.loads(stored_path.read_text()), config.to_dict(), allowed)
    if differences:
        raise ValueError(
            f"output_dir={str(output_dir)!r} holds a run of another recipe (it differs in {differences}); "
            + (f"a resumed run may change only {_names(resumable)}; " if resume is not None else "")
            + "choose another output_dir, or pass --overwrite (train(..., overwrite=True)) to replace that run"
        )


def resolve_resume(config, resumable: tuple[str, ...] = RESUMABLE_CHANGES) -> tuple[Path, dict] | tuple[None, None]:
    """The checkpoint directory to resume from with its manifest (checked), or ``(None, None)`` to start fresh.

    ``latest`` takes the newest intact checkpoint of ``output_dir`` (skipping, with a warning, newer
    incomplete or damaged ones); a directory must be intact (an error names the damaged file). Either way
    the checkpoint's recipe must be this one but for ``resumable``.
    """
    resume = config.checkpoint.resume_from
    if resume is None:
        return None, None
    if resume == "latest":
        path = latest_intact(Path(config.output_dir))
        if path is None:
            return None, None
    else:
        path = Path(resume)
        if not path.is_dir():
            raise ValueError(f"checkpoint.resume_from={resume!r} is neither 'latest' nor an existing checkpoint "
                             "directory")
    manifest = verify(path)
    differences = _recipe_differences(manifest["recipe"], config.to_dict(), resumable)
    if differences:
        raise CheckpointError(f"checkpoint {path} is of another recipe (it differs in {differences}); a resumed "
                              f"run may change only {_names(resumable)}")
    return path, manifest


def _names(keys: tuple[str, ...]) -> str:
    """``("a.b", "c.")`` -> ``"a.b and c"``, for messages."""
    names = [key.rstrip(".") for key in keys if key != "output_dir"]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


@dataclass
class TrainResult:
    """``summary``: steps, final loss, time, eval scores, where the model was saved (also in
    ``output_dir/summary.json``); ``model``: the trained model on this process (unwrapped)."""

    summary: dict
    model: torch.nn.Module


def train(config: RecipeConfig, stop_at: int | None = None, overwrite: bool = False) -> TrainResult:
    """Train as ``config`` says.

    ``stop_at``: end after this optimizer step (with a checkpoint), as a preempted job would.
    ``overwrite``: start a new run in an ``output_dir`` that holds another one (its checkpoints, log and
    summary are deleted); without it such a directory is refused (:func:`check_output_dir`).
    """
    output_dir = Path(config.output_dir)
    check_output_dir(config, overwrite)
    trackers = available_trackers(config.logging.trackers)
    accelerator = make_accelerator(config.train.gradient_accumulation_steps, config.train.precision, trackers,
                                   output_dir)
    set_seed(config.train.seed)
    check_distributed_type(accelerator.distributed_type, config)
    resume_dir, manifest = resolve_resume(config)

    tokenizer = build_tokenizer(config)
    dataset, eval_data = build_dataset(config, tokenizer)
    model = build_model(config, tokenizer)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.optimizer.lr,
        betas=tuple(config.optimizer.betas), eps=config.optimizer.eps, weight_decay=config.optimizer.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.schedule, config.train.max_steps))
    collator = PackedCollator(PrefixLMInputs.for_model(model.config, config.data.prefix_length))
    loader = make_loader(dataset, config.train.batch_size, config.train.seed, collator)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    check_loader(accelerator, dataset, loader, "train.batch_size", config.train.batch_size)
    # The scheduler steps once per optimizer step whatever the number of processes (not prepared).
    step = 0
    if resume_dir is not None:
        step = load_checkpoint(accelerator, resume_dir, model, optimizer, scheduler, manifest)
        accelerator.print(f"[memlm] resumed from {resume_dir} at step {step}")
    start_run(accelerator, config, resume_dir is not None, step, trackers)
    last_step = min(config.train.max_steps, stop_at or config.train.max_steps)
    accum = config.train.gradient_accumulation_steps
    model.train()
    batches = micro_batches(accelerator, loader, step * accum) if step < last_step else ()
    loop = optimize(
        accelerator, model, optimizer, scheduler, batches, lambda batch: model(**batch, use_cache=False).loss,
        first_step=step, last_step=last_step, max_grad_norm=config.train.max_grad_norm,
        log_every=config.train.log_every, max_minutes=config.train.max_minutes,
        log=RunLog(accelerator, output_dir, trackers),
        save=lambda at: save_run_checkpoint(accelerator, config, model, optimizer, scheduler, at),
        checkpoint_every=config.checkpoint.every,
    )
    step = loop.step
    summary = {"steps": step, "final_loss": loop.losses[-1] if loop.losses else None,
               "train_seconds": loop.seconds, "stopped_by_time": loop.stopped_by_time,
               "distributed_type": accelerator.distributed_type.value, "num_processes": accelerator.num_processes}
    if loop.stopped_by_time:
        accelerator.print(f"[memlm] train.max_minutes={config.train.max_minutes} reached at step {step} "
                          f"of {config.train.max_steps}")
    model = accelerator.unwrap_model(model)
    if step >= config.train.max_steps or loop.stopped_by_time:
        model = _finish(accelerator, model, tokenizer, config, eval_data, summary)
    accelerator.end_training()
    if accelerator.is_main_process:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(summary, model)


def make_accelerator(gradient_accumulation_steps: int, precision: str, trackers: list[str],
                     output_dir: Path) -> Accelerator:
    """The Accelerator of a run: ``gradient_accumulation_steps`` micro-batches per optimizer step, across epoch
    ends (optimizer step n always starts at micro-batch n * accum), each process reading its own rows."""
    return Accelerator(
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # each process reads its own rows of a stream (packed rows are flattened per process)
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
        mixed_precision=precision,
        log_with=trackers or None,
        project_dir=str(output_dir),
    )


def make_loader(dataset, batch_size: int, seed: int, collator) -> DataLoader:
    """Batches of ``batch_size`` rows in the order of :class:`EpochSampler` (a stream: in its own order)."""
    sampler = None if isinstance(dataset, IterableDataset) else EpochSampler(len(dataset), seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, drop_last=True)


def check_loader(accelerator: Accelerator, dataset, loader, key: str, batch_size: int) -> None:
    """Refuse a (prepared) loader of a map-style dataset that has no full batch; ``key`` names the batch size."""
    if not isinstance(dataset, IterableDataset) and len(loader) == 0:
        raise ValueError(
            f"the data has {len(dataset)} rows, fewer than one batch of {key}={batch_size} "
            f"per process x {accelerator.num_processes} processes"
        )


def start_run(accelerator: Accelerator, config, resumed: bool, step: int, trackers: list[str]) -> None:
    """After every process has chosen its checkpoint: prepare ``output_dir`` (:func:`_start_output_dir`) and
    start the trackers with the recipe as hyperparameters."""
    accelerator.wait_for_everyone()  # every process has chosen its checkpoint before any file changes
    if accelerator.is_main_process:
        _start_output_dir(config, resumed, step)
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers(config.logging.project, config=_flat(config.to_dict()))


class RunLog:
    """Where each optimizer step's record goes: a line of ``output_dir/train_log.jsonl`` (main process) and the
    trackers (numbers but ``step``)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, trackers: list[str]):
        self.accelerator, self.path, self.trackers = accelerator, Path(output_dir) / "train_log.jsonl", trackers

    def __call__(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.trackers:
            numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
            self.accelerator.log(numbers, step=record["step"])


@dataclass
class LoopResult:
    """``step``: the last optimizer step done; ``losses``: each step's mean loss; ``seconds``: wall time."""

    step: int
    losses: list[float]
    stopped_by_time: bool
    seconds: float


def optimize(accelerator: Accelerator, model, optimizer, scheduler, batches,
             compute_loss: Callable[[dict], torch.Tensor], *, first_step: int, last_step: int,
             max_grad_norm: float | None, log_every: int,
             max_minutes: float | None, log: Callable[[dict], None], save: Callable[[int], None],
             checkpoint_every: int, desc: str = "train", extra: dict | None = None) -> LoopResult:
    """Optimizer steps ``first_step + 1 .. last_step`` over ``batches`` (micro-batches from the right one on).

    Each micro-batch: ``compute_loss(batch)`` (a scalar), backward under ``accelerator.accumulate(model)``
    (``model``: the prepared module whose parameters are trained and clipped to ``max_grad_norm``); every
    ``accelerator.sync_gradients`` the scheduler steps, ``log`` gets ``{"step", "loss", "lr", "tokens_per_s",
    **extra}``, the progress bar moves, and ``save(step)`` runs every ``checkpoint_every`` steps, at
    ``last_step`` and when ``max_minutes`` have passed (the loop then ends).
    """
    progress = tqdm(total=last_step, initial=first_step, desc=desc, disable=not accelerator.is_main_process)
    started, tokens, loss_sum, micro_in_step = time.perf_counter(), 0, 0.0, 0
    step, losses, stopped_by_time = first_step, [], False
    for batch in batches:
        with accelerator.accumulate(model):
            loss = compute_loss(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        loss_sum += accelerator.reduce(loss.detach(), "mean").item()
        tokens += batch["input_ids"].numel() * accelerator.num_processes
        micro_in_step += 1
        if not accelerator.sync_gradients:
            continue
        scheduler.step()
        step += 1
        step_loss, loss_sum, micro_in_step = loss_sum / micro_in_step, 0.0, 0
        losses.append(step_loss)
        tokens_per_s = tokens / (time.perf_counter() - started)
        log({"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s,
             **(extra or {})})
        if step % log_every == 0 or step == last_step:
            progress.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
        progress.update(1)
        stopped_by_time = _time_is_up(accelerator, started, max_minutes)
        if (checkpoint_every and step % checkpoint_every == 0) or step == last_step or stopped_by_time:
            save(step)
        if step >= last_step or stopped_by_time:
            break
    progress.close()
    return LoopResult(step, losses, stopped_by_time, time.perf_counter() - started)


def check_distributed_type(distributed_type: DistributedType, config: RecipeConfig) -> None:
    """Refuse, before any work, what memlm's training cannot do under this kind of distribution.

    DeepSpeed: see :func:`refuse_deepspeed`. FSDP: a merged LoRA model needs every parameter on one process.
    """
    refuse_deepspeed(distributed_type)
    if config.lora.enabled and config.lora.merge and distributed_type == DistributedType.FSDP:
        raise ValueError(
            "lora.merge=true needs the whole model on one process: with FSDP set lora.merge=false "
            "(the adapter is saved) and merge afterwards with peft's merge_and_unload"
        )


def refuse_deepspeed(distributed_type: DistributedType) -> None:
    """Refuse DeepSpeed (training and distillation): memlm's checkpoints hold safetensors and JSON only, and
    DeepSpeed's engine keeps its partitioned optimizer state in objects that only its own (pickling) checkpoint
    writer saves."""
    if distributed_type == DistributedType.DEEPSPEED:
        raise ValueError(
            "DeepSpeed is not supported by memlm's trainer: its checkpoints are safetensors and JSON only, and "
            "DeepSpeed's optimizer state can only be saved by its own pickle-based writer. For sharded training "
            "use FSDP2 (recipes/accelerate/fsdp.yaml), which shards parameters, gradients and optimizer state"
        )


def _time_is_up(accelerator: Accelerator, started: float, max_minutes: float | None) -> bool:
    """Whether ``max_minutes`` of training have passed on the main process (all processes get its answer)."""
    if max_minutes is None:
        return False
    elapsed = torch.tensor([time.perf_counter() - started], device=accelerator.device)
    return bool(broadcast(elapsed, from_process=0).item() > 60 * max_minutes)


def micro_batches(accelerator: Accelerator, loader, start: int):
    """Micro-batches from number ``start`` on, forever: epochs of a map-style dataset in the order of
    :class:`EpochSampler`, or a stream that repeats (skipping replays the stream from its start)."""
    if not hasattr(loader, "__len__") or isinstance(loader.dataset, IterableDataset):
        yield from (accelerator.skip_first_batches(loader, start) if start else loader)
        return
    epoch, offset = divmod(start, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, offset) if offset else loader)
        epoch, offset = epoch + 1, 0


def _start_output_dir(config: RecipeConfig, resumed: bool, step: int) -> None:
    """Main process, before training: a new run removes the previous run's checkpoints, log and summary
    (:func:`check_output_dir` allowed it); a resumed run drops the log lines after its checkpoint's
    ``step``. Then ``recipe.json`` records this run's recipe."""
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "train_log.jsonl"
    if resumed:
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step] \
            if log_path.is_file() else []
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))
    elif config.checkpoint.resume_from is None:  # with resume_from=latest and no intact checkpoint: keep them
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
        log_path.unlink(missing_ok=True)
        (output_dir / "summary.json").unlink(missing_ok=True)
    else:
        log_path.unlink(missing_ok=True)
    atomic_write_text(output_dir / RECIPE_FILE, json.dumps(config.to_dict(), indent=2))


def save_run_checkpoint(accelerator: Accelerator, config: RecipeConfig, model, optimizer, scheduler, step: int) -> None:
    """Save the checkpoint of ``step``, then keep the newest ``checkpoint.keep`` of those up to ``step``
    (later ones, of a run resumed from an earlier checkpoint, are left)."""
    output_dir = Path(config.output_dir)
    save_checkpoint(accelerator, output_dir / "checkpoints" / f"step_{step}", model, optimizer, scheduler, step,
                    config.to_dict())
    if accelerator.is_main_process:
        done = [path for saved, path in checkpoint_dirs(output_dir) if saved <= step]
        stale = [path for saved, path in checkpoint_dirs(output_dir, partial=True) if saved <= step]
        for old in done[:-config.checkpoint.keep] + stale:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def _finish(accelerator: Accelerator, model, tokenizer, config: RecipeConfig, eval_data, summary: dict):
    """Save the final model (LoRA merged when asked) with its tokenizer, run the evaluations (into
    ``summary``), and return the final model."""
    output_dir = Path(config.output_dir)
    model = save_model(accelerator, model, tokenizer, output_dir, config.lora.enabled and config.lora.merge)
    results = run_evaluations(model, config, eval_data) if accelerator.is_main_process else {}
    for name, value in results.items():
        accelerator.print(f"[memlm] eval {name}: {value:.4f}")
    summary.update(eval=results, saved_to=str(output_dir))
    return model


def save_model(accelerator: Accelerator, model, tokenizer, output_dir: Path, merge_lora: bool):
    """Save ``model`` (unwrapped; its LoRA adapters merged first when ``merge_lora``) with ``tokenizer`` into
    ``output_dir`` as a Hugging Face model directory (safetensors); return the saved model."""
    accelerator.wait_for_everyone()
    if merge_lora:
        model = model.merge_and_unload()
    state_dict = accelerator.get_state_dict(model)  # gathers sharded (FSDP) parameters
    if accelerator.is_main_process:
        model.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    return model


def _flat(tree: dict, prefix: str = "") -> dict:
    """Nested config -> ``{"a.b": scalar}`` for the trackers' hyperparameter tables."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat
