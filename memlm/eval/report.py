"""Evaluation results as files a person reads: JSON, a markdown table and PNG plots.

A *record* is one scored example: ``{"task", "variant", "context_length", "depth", "score"}``
(``depth`` None where it does not apply; ``variant`` e.g. ``"plain"`` or ``"jrt"``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from memlm.files import atomic_write, atomic_write_text

REPORT_FILES = ("results.json", "results.md")
"""The files :func:`write_report` always writes (plots come with them)."""


def summarize(records: list[dict]) -> list[dict]:
    """Mean score per (task, variant, context_length), sorted."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["task"], r["variant"], r["context_length"])].append(r["score"])
    return [
        {"task": t, "variant": v, "context_length": n, "examples": len(s), "score": sum(s) / len(s)}
        for (t, v, n), s in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0))
    ]


def markdown_table(summary: list[dict]) -> str:
    """Tasks x variants (mean over all lengths), then a row per context length."""
    lines = ["| task | variant | context length | examples | score |", "|---|---|---|---|---|"]
    for row in summary:
        length = "-" if row["context_length"] is None else row["context_length"]
        lines.append(f"| {row['task']} | {row['variant']} | {length} | {row['examples']} | {row['score']:.3f} |")
    return "\n".join(lines) + "\n"


def check_output_dir(out_dir: str | Path) -> None:
    """Raise ``ValueError`` unless :func:`write_report` can write into ``out_dir`` without destroying anything:
    it is a writable directory holding no earlier report, or it can be created (its nearest existing ancestor is
    a writable directory). Meant to run before the work whose results go there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} exists and is not a directory (the report is a directory of files)")
    if out.is_dir():
        earlier = [name for name in REPORT_FILES if (out / name).exists()]
        if earlier:
            raise ValueError(f"{str(out)!r} already holds {earlier} of an earlier evaluation, which this one would "
                             "overwrite: choose a new directory or remove them")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"{str(out)!r} is a directory this process cannot write into")
        return
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{str(out)!r} cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{str(out)!r} cannot be created: {str(ancestor)!r} is not writable")


def write_report(records: list[dict], out_dir: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the plots into ``out_dir``, each atomically; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    paths = {"json": out / "results.json", "table": out / "results.md"}
    results = json.dumps({"meta": meta or {}, "summary": summary, "records": records}, indent=2)
    atomic_write_text(paths["json"], results)
    atomic_write_text(paths["table"], markdown_table(summary))
    lengths = [r for r in summary if r["context_length"] is not None]
    if lengths:
        paths["lengths_plot"] = plot_score_by_length(lengths, out / "score_by_length.png")
    with_depth = [r for r in records if r.get("depth") is not None]
    for task, variant in sorted({(r["task"], r["variant"]) for r in with_depth}):
        name = f"{task}_heatmap" if variant == "plain" else f"{task}_{variant}_heatmap"
        cell = [r for r in with_depth if (r["task"], r["variant"]) == (task, variant)]
        paths[name] = plot_depth_heatmap(cell, task if variant == "plain" else f"{task} ({variant})",
                                         out / f"{name}.png")
    return paths


def plot_score_by_length(summary: list[dict], path: Path) -> Path:
    """Score against context length, one line per task and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["task"], r["variant"]) for r in summary}):
        rows = sorted((r for r in summary if (r["task"], r["variant"]) == key), key=lambda r: r["context_length"])
        ax.plot([r["context_length"] for r in rows], [r["score"] for r in rows], marker="o", label=" / ".join(key))
    ax.set(xlabel="context length (tokens)", ylabel="score", ylim=(-0.02, 1.02), title="Score by context length")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_depth_heatmap(records: list[dict], task: str, path: Path) -> Path:
    """Mean score for every (context length, depth) cell of a needle grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["context_length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    cells = defaultdict(list)
    for r in records:
        cells[(r["depth"], r["context_length"])].append(r["score"])
    grid = [[sum(cells[(d, n)]) / len(cells[(d, n)]) if cells[(d, n)] else float("nan") for n in lengths]
            for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.5 * len(depths)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="context length (tokens)", ylabel="needle depth", title=f"{task}: score by length and depth")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
