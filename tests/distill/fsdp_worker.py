"""Distill a tiny Llama teacher into a hybrid with torch's FSDP2 on the processes torchrun starts (one process: no
sharding), as ``memlm.distill.run`` does under Accelerate's FSDP2: each stage trains a copy of the student sharded
per decoder layer with each replaced mixer its own unit (:func:`~memlm.distill.run.fsdp_unit_classes`, wrapped
bottom up as Accelerate does), and the whole student takes the trained weights back after it.

``fsdp_worker.py OUT_DIR STOP`` stops after optimizer step STOP (counted across the stages) with memlm's checkpoint;
``fsdp_worker.py OUT_DIR resume`` continues from it; ``all`` runs through. Accelerate selects FSDP on GPUs only, so
this drives the run's objectives and helpers with torch's FSDP2 directly. Writes ``losses.json`` (each step's
loss, the mean over the processes) and the final student (``save_pretrained``) into OUT_DIR.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.fsdp import fully_shard

from memlm.distill.alignment import mixer_parameters
from memlm.distill.run import AlignmentObjective, DistillationObjective, fsdp_unit_classes, keep_trained, stage_copy
from memlm.distill.student import hybrid_from_teacher
from memlm.training.checkpointing import load_checkpoint, save_checkpoint, verify
from tests.distill.teachers import TINY, tiny_teacher

STAGE1, STAGE2, ROWS, LENGTH = 2, 2, 4, 12


def shard(objective: torch.nn.Module, classes: list[str]) -> None:
    """``fully_shard`` every module whose class is in ``classes``, innermost first, then the objective."""
    for module in reversed(list(objective.modules())):
        if type(module).__name__ in classes:
            fully_shard(module)
    fully_shard(objective)


def train(objective, first: int, last: int, resume: Path | None, stop: int | None) -> None:
    """Steps ``first + 1 .. last`` of a stage on ``objective``'s mixers (continuing ``resume``), all else frozen;
    the checkpoint of step ``stop`` when it falls in the stage."""
    student = objective.student
    objective.requires_grad_(False)
    for parameter in mixer_parameters(student, replaced):
        parameter.requires_grad_(True)
    if sharded:
        shard(objective, classes)
    optimizer = torch.optim.AdamW(mixer_parameters(student, replaced), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    start = first if resume is None else load_checkpoint(state, resume, objective, optimizer, scheduler,
                                                         verify(resume))
    for step in range(start, last if stop is None else min(stop, last)):
        rows = data[step].chunk(state.num_processes)[state.process_index]  # this process's share of the batch
        loss = objective(rows, torch.ones_like(rows))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        mean = loss.detach().clone()
        if sharded:
            torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
        losses.append(mean.item())
    if stop is not None and first < stop <= last:
        save_checkpoint(state, checkpoint, objective, optimizer, scheduler, stop, recipe={})


if __name__ == "__main__":
    out, mode = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    state = PartialState(cpu=True)  # gloo under torchrun
    sharded = state.num_processes > 1
    teacher = tiny_teacher("llama").requires_grad_(False)
    torch.manual_seed(0)
    student = hybrid_from_teacher(teacher, [1], "gated_deltanet")
    replaced = list(student.distill_init_report.replaced)
    classes = fsdp_unit_classes(student, replaced)
    data = torch.randint(TINY["vocab_size"], (STAGE1 + STAGE2, ROWS, LENGTH),
                         generator=torch.Generator().manual_seed(1))
    stop = None if mode in ("all", "resume") else int(mode)
    stopped = out / "stopped.json"
    resumed_at = json.loads(stopped.read_text()) if mode == "resume" else 0
    checkpoint = out / "checkpoints" / f"step_{stop or resumed_at}"
    losses = json.loads((out / "losses.json").read_text()) if mode == "resume" else []
    for first, last, build in ((0, STAGE1, lambda model: AlignmentObjective(model, teacher, replaced)),
                               (STAGE1, STAGE1 + STAGE2,
                                lambda model: DistillationObjective(model, teacher, temperature=2.0, ce_weight=0.5))):
        if resumed_at > last or (stop is not None and stop <= first):
            continue
        objective = build(stage_copy(student, sharded))
        train(objective, first, last, checkpoint if first < resumed_at else None, stop)
        keep_trained(student, objective.student, sharded)
    if state.is_main_process:
        (out / "losses.json").write_text(json.dumps(losses))
        if stop is not None:
            stopped.write_text(json.dumps(stop))
        else:
            student.save_pretrained(out, safe_serialization=True)
    state.wait_for_everyone()
