"""Distillation at tiny scale on a CPU: a byte-level Llama teacher into a 3:1 GatedDeltaNet hybrid.

1. Teacher: a 4-layer byte-level ``LlamaForCausalLM`` (transformers' class), trained from random weights with
   ``recipes/train.py``'s trainer on the Python standard library's own sources (:func:`stdlib_corpus`: the
   ``*.py`` files at the top of ``sysconfig.get_paths()["stdlib"]``, sorted; every 10th file held out). That
   text is on every machine memlm runs on and is large enough (~4-5 MB) that the teacher does not overfit it
   (memlm's ~200 KB of docs, the recipe's own text, it did: a teacher that has memorized its training text knows
   little that a hybrid trained from scratch cannot learn in the distillation's steps). The corpus depends on
   the Python version: the script prints and reports its size.
2. Student: ``recipes/configs/distill_tiny.yaml`` (``memlm.distill.run.distill``): layers 0-2 become
   GatedDeltaNet mixers initialized from their attention, layer 3 keeps the teacher's attention; stage 1
   aligns each mixer with its attention's output, stage 2 distills the logits (KL), the new mixers trained.
3. Scratch: a hybrid of the student's exact config from random weights, trained on the same text with the
   same batch for as many steps as the two distillation stages together.

Student and scratch are trained on the teacher's text (the script replaces the recipe's ``data.files`` and
``eval.files`` by the corpus, one JSON document per file: :func:`write_documents`). All three are measured on the
held-out files (never trained on): next-token loss and copy recall (the second half of a held-out row repeated
after it, token accuracy on the copy: recall at the training length, counted by :func:`memlm.eval.mqar_accuracy`).
Writes a Markdown report, a JSON and a PNG::

    python scripts/reproduce_distill.py --threads 1

``--quick`` runs a few steps of each (a smoke test) and writes under /tmp unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "distill_tiny.yaml"
HELDOUT_EVERY = 10  # every 10th file of the sorted corpus is held out
TEACHER = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2}


def parse_args(argv=None) -> argparse.Namespace:
    from harness.runs import add_run_arguments, finish_run_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=1200, help="pretraining steps of the teacher")
    parser.add_argument("--teacher-lr", type=float, default=2e-3, help="learning rate of teacher and scratch")
    parser.add_argument("--teacher-dir", default="runs/llama_byte_tiny",
                        help="where the trained teacher is saved (distill_tiny.yaml's teacher)")
    parser.add_argument("--seed", type=int, default=0)
    add_run_arguments(parser, "docs/results/distill/distill.md", "docs/results/distill/distill.png", jobs=False)
    args = parser.parse_args(argv)
    finish_run_arguments(args, argv, "/tmp/distill_quick")
    args.overrides = []
    if args.quick:
        args.teacher_steps = 6
        args.overrides = ["stage1.steps=3", "stage2.steps=3", "stage1.warmup_steps=0", "stage2.warmup_steps=0",
                          "data.seq_len=64", "eval.heldout_rows=4", "data.max_documents=200"]
        if "--teacher-dir" not in (argv or []):
            args.teacher_dir = None  # under the workdir
    return args


def stdlib_corpus(quick: bool = False) -> tuple[list[str], list[str]]:
    """``(training files, held-out files)``: the ``*.py`` files at the top of the running Python's standard
    library, sorted by name, every :data:`HELDOUT_EVERY`-th held out (``quick``: 3 and 1 of them)."""
    import sysconfig

    files = sorted(str(path) for path in Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    heldout = files[HELDOUT_EVERY - 1 :: HELDOUT_EVERY]
    training = [name for name in files if name not in set(heldout)]
    if not heldout:
        raise ValueError(f"the standard library at {sysconfig.get_paths()['stdlib']} holds {len(files)} *.py "
                         f"file(s): fewer than {HELDOUT_EVERY}, no held-out file")
    return (training[:3], heldout[:1]) if quick else (training, heldout)


def corpus_bytes(files: list[str]) -> int:
    return sum(Path(name).stat().st_size for name in files)


def write_documents(files: list[str], path: Path) -> Path:
    """The files as JSON Lines, one ``{"text": ...}`` document per file: a packed row is a contiguous piece of one
    source file, as the distillation and the held-out measures read it (one sequence per row). The ``text``
    source would make each line a document: a teacher trained on lines alone never sees a row's context."""
    from memlm.files import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps({"text": Path(name).read_text(encoding="utf-8")}) + "\n"
                                           for name in files))


def text_recipe(args, output_dir: Path, model_dir: Path, steps: int, data: dict) -> dict:
    """The training recipe of teacher and scratch: the model saved in ``model_dir`` trained on ``data``."""
    return {
        "output_dir": str(output_dir),
        "model": {"pretrained": str(model_dir)},
        "tokenizer": {"kind": "pretrained"},
        "data": data,
        "optimizer": {"lr": args.teacher_lr, "weight_decay": 0.1},
        "schedule": {"kind": "cosine", "warmup_steps": min(20, max(1, steps // 10)), "min_lr_ratio": 0.1},
        "train": {"max_steps": steps, "batch_size": 8, "seed": args.seed, "log_every": max(1, steps // 10)},
        "checkpoint": {"every": 0, "keep": 1},
        "logging": {"trackers": []},
    }


def save_initial(model, path: Path) -> Path:
    """Save a freshly initialized model with memlm's byte-level tokenizer (a directory ``train`` starts from)."""
    from memlm.tokenization import byte_level_tokenizer

    model.save_pretrained(path)
    byte_level_tokenizer().save_pretrained(path)
    return path


def train_teacher(args, workdir: Path, data: dict, teacher_dir: Path) -> float:
    """Train the byte-level Llama teacher into ``teacher_dir``; returns the seconds it took."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from memlm.tokenization import byte_level_tokenizer
    from memlm.training import train
    from memlm.training.config import config_from_dict

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=data["seq_len"] * 2,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TEACHER)
    initial = save_initial(LlamaForCausalLM(config), workdir / "teacher_init")
    started = time.perf_counter()
    train(config_from_dict(text_recipe(args, teacher_dir, initial, args.teacher_steps, data)), overwrite=True)
    return time.perf_counter() - started


def train_scratch(args, workdir: Path, data: dict, student_dir: Path, steps: int) -> tuple:
    """The student's config from random weights, trained for ``steps``; returns (model, seconds)."""
    import torch

    import memlm
    from memlm.training import train
    from memlm.training.config import config_from_dict

    torch.manual_seed(args.seed)
    config = memlm.MemLMConfig.from_pretrained(student_dir)
    initial = save_initial(memlm.MemLMForCausalLM(config), workdir / "scratch_init")
    started = time.perf_counter()
    result = train(config_from_dict(text_recipe(args, workdir / "scratch", initial, steps, data)), overwrite=True)
    return result.model, time.perf_counter() - started


def loss_curve(run_dir: Path) -> list[tuple[int, float, int]]:
    """``(step, loss, stage)`` of each logged step of a run (stage 0: plain training)."""
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"], r.get("stage", 0)) for r in map(json.loads, lines)]


def markdown_tables(results: dict) -> str:
    rows = results["models"]
    teacher = rows["teacher"]["loss"]
    lines = ["| model | training | held-out loss (nats/byte) | / teacher | copy recall |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['training']} | {row['loss']:.3f} | {row['loss'] / teacher:.3f} | "
                     f"{row['copy_recall']:.3f} |")
    lines += ["", "| layer | stage-1 MSE before | after | after / before |", "|---|---|---|---|"]
    for layer, mse in results["alignment_mse"].items():
        lines.append(f"| {layer} | {mse['before']:.3g} | {mse['after']:.3g} | {mse['after'] / mse['before']:.3f} |")
    return "\n".join(lines)


def plot(results: dict, curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.runs import save_figure

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(results["models"])
    left.bar([name.replace(" ", "\n", 1) for name in names], [results["models"][n]["loss"] for n in names],
             color=["C0", "C7", "C2", "C3"][: len(names)])
    left.axhline(1.1 * results["models"]["teacher"]["loss"], color="grey", linestyle="--", linewidth=0.8,
                 label="1.1 x teacher")
    left.set_ylabel("held-out next-byte loss (nats)")
    left.tick_params(axis="x", labelsize=8)
    left.legend(fontsize=8)
    for name, points in curves.items():
        right.plot([p[0] for p in points], [p[1] for p in points], label=name)
    right.set_xlabel("optimizer step")
    right.set_ylabel("training loss (CE; distillation: stage-2 KL)")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    save_figure(fig, path)


def write_report(args, results: dict, command: str) -> None:
    from harness.runs import machine_description

    figure = os.path.relpath(args.figure, Path(args.out).parent)
    s = results["setup"]
    c = s["corpus"]
    budget = args.teacher_steps * 8 * s["seq_len"] / 1e6
    text = f"""# Distilling a Transformer into a hybrid, at tiny scale (generated)

Command (from the repository root; {s['threads']} torch thread(s) on a shared machine):

```
{command}
```

Teacher: a byte-level `LlamaForCausalLM` (hidden {TEACHER['hidden_size']}, {TEACHER['num_hidden_layers']} layers,
{TEACHER['num_attention_heads']} heads, {TEACHER['num_key_value_heads']} key/value heads), trained from random weights
for {args.teacher_steps} steps (batch 8 x {s['seq_len']} bytes: {budget:.2f} M bytes) with `recipes/train.py`'s
trainer on the Python {c['python']} standard library's top-level `*.py` files, sorted, every {HELDOUT_EVERY}th
held out, one document per file: {c['training_files']} training files ({c['training_bytes'] / 1e6:.2f} MB),
{c['heldout_files']} held-out files ({c['heldout_bytes'] / 1e6:.2f} MB); the corpus depends on the Python
version. Student: the recipe `recipes/configs/distill_tiny.yaml` with its data replaced by that corpus
(`memlm.distill`): layers {s['replaced']} become
GatedDeltaNet initialized from their attention, layer(s) {s['kept']} keep the teacher's attention (3:1); stage 1
{s['stage1_steps']} steps (attention-output MSE, each mixer alone), stage 2 {s['stage2_steps']} steps (KL to the
teacher, the new mixers trained, everything else frozen). Scratch: the student's exact config from random weights,
trained like the teacher for {s['stage1_steps'] + s['stage2_steps']} steps (as many as both stages). Measured on
the first {s['heldout_rows']} held-out rows of {s['seq_len']} bytes (from the held-out files, never trained on): loss,
and copy recall (each row's first half repeated; token accuracy on the copy).

Machine: {machine_description()}. Wall time: teacher {results['seconds']['teacher'] / 60:.1f} min, distillation
{results['seconds']['distill'] / 60:.1f} min, scratch {results['seconds']['scratch'] / 60:.1f} min (one run after
the other, {s['threads']} thread(s), shared machine: compare them as ratios only).

{markdown_tables(results)}

![held-out loss and training curves]({figure})
"""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {"command": command, "args": vars(args), **results}, indent=1, default=str))


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from harness.runs import prepare_run, script_command
    from memlm.distill.config import config_from_dict
    from memlm.distill.run import distill, measure, training_and_heldout_rows
    from memlm.training.builders import pretrained_tokenizer
    from memlm.training.config import read_recipe

    command = script_command(__file__, argv)
    workdir = prepare_run(args, "distill_repro_")
    teacher_dir = Path(args.teacher_dir) if args.teacher_dir else workdir / "teacher"
    raw = read_recipe(RECIPE, [*args.overrides, f"teacher={teacher_dir}", f"output_dir={workdir / 'student'}",
                               f"train.seed={args.seed}", "logging.trackers=[]"])
    training_files, heldout_files = stdlib_corpus(args.quick)
    raw["data"].update(source="json", files=[str(write_documents(training_files, workdir / "corpus_train.jsonl"))])
    raw["eval"].update(source="json", files=[str(write_documents(heldout_files, workdir / "corpus_heldout.jsonl"))])
    corpus = {"python": sys.version.split()[0], "training_files": len(training_files),
              "training_bytes": corpus_bytes(training_files), "heldout_files": len(heldout_files),
              "heldout_bytes": corpus_bytes(heldout_files)}
    print(f"corpus: Python {corpus['python']} standard library, {corpus['training_files']} training files "
          f"({corpus['training_bytes'] / 1e6:.2f} MB), {corpus['heldout_files']} held-out files "
          f"({corpus['heldout_bytes'] / 1e6:.2f} MB)")
    config = config_from_dict(raw)  # checked before any training
    data = {key: value for key, value in raw["data"].items()}
    seconds = {"teacher": train_teacher(args, workdir, data, teacher_dir)}
    started = time.perf_counter()
    distilled = distill(config, overwrite=True)
    seconds["distill"] = time.perf_counter() - started
    steps = config.stage1.steps + config.stage2.steps
    scratch, seconds["scratch"] = train_scratch(args, workdir, data, workdir / "student", steps)
    summary = distilled.summary
    _, heldout = training_and_heldout_rows(config, pretrained_tokenizer(str(teacher_dir)))
    scratch_scores = measure({"scratch": scratch}, heldout, config.eval.batch_size)["scratch"]
    models = {
        "teacher": {**summary["heldout"]["teacher"], "training": f"{args.teacher_steps} steps"},
        "student, weights copied": {**summary["heldout"]["student_init"], "training": "none"},
        "distilled student": {**summary["heldout"]["student"], "training": f"+ {steps} distillation steps"},
        "scratch hybrid": {**scratch_scores, "training": f"{steps} steps"},
    }
    results = {
        "setup": {"threads": torch.get_num_threads(), "seq_len": config.data.seq_len, "kept": summary["kept_attention"],
                  "replaced": summary["replaced"], "stage1_steps": config.stage1.steps,
                  "stage2_steps": config.stage2.steps, "heldout_rows": summary["heldout_rows"],
                  "corpus": corpus},
        "models": models,
        "alignment_mse": summary["stage1"]["alignment_mse"],
        "seconds": seconds,
        "student_summary": summary,
    }
    curves = {"teacher": loss_curve(teacher_dir), "distillation (stage 2 KL)":
              [p for p in loss_curve(workdir / "student") if p[2] == 2], "scratch": loss_curve(workdir / "scratch")}
    write_report(args, results, command)
    plot(results, curves, args.figure)
    print(markdown_tables(results))
    return results


if __name__ == "__main__":
    main()
