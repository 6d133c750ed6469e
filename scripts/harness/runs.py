"""What the reproduction scripts share around a run: their common flags, and what a report records (the
command that made it, the machine it ran on, its figure)."""

from __future__ import annotations

import sys
from pathlib import Path


def machine_description() -> str:
    """CPU model, visible CPUs, torch version and threads, Python, and the GPU if any: for result tables."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, {gpu}")


def script_command(script: str, argv: list[str] | None = None) -> str:
    """``python scripts/NAME.py ARGS...`` as typed from the repository root (``argv`` default: ``sys.argv[1:]``)."""
    import shlex

    args = sys.argv[1:] if argv is None else argv
    return f"python scripts/{Path(script).name} " + " ".join(shlex.quote(a) for a in args)


def add_run_arguments(parser, out: str, figure: str, jobs: bool = True) -> None:
    """The flags the reproduction scripts share: ``--threads``, ``--jobs`` and ``--max-minutes`` (with
    ``jobs``), ``--out``, ``--figure``, ``--workdir`` and ``--quick``."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    if jobs:
        parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
        parser.add_argument("--max-minutes", type=float, default=None, help="wall-clock limit of each run's training")
    parser.add_argument("--out", default=out)
    parser.add_argument("--figure", default=figure)
    parser.add_argument("--workdir", default=None, help="run directories (default: a fresh folder under /tmp)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (outputs under /tmp by default)")


def finish_run_arguments(args, argv: list[str] | None, quick_folder: str) -> None:
    """Settle the flags of :func:`add_run_arguments`: with ``--quick``, ``--out`` and ``--figure`` not given go
    to ``quick_folder`` (not over the committed docs); ``--jobs`` (where the script has it) must be at least 1."""
    given = argv if argv is not None else sys.argv
    if args.quick:
        if "--out" not in given:
            args.out = str(Path(quick_folder) / Path(args.out).name)
        if "--figure" not in given:
            args.figure = str(Path(quick_folder) / Path(args.figure).name)
    if getattr(args, "jobs", 1) < 1:
        raise SystemExit(f"--jobs must be at least 1, got {args.jobs}")


def prepare_run(args, prefix: str) -> Path:
    """Apply ``--threads`` to torch and return the run folder: ``--workdir`` (created), or a fresh folder under /tmp
    named ``prefix...``."""
    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (120 dpi, folders created) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
