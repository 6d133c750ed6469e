"""scripts/reproduce_distill.py: its corpus (the standard library's sources, held-out files apart) and the --quick
run end to end, writing its report, JSON and figure (slow: ~30 s)."""

import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import memlm
import reproduce_distill  # scripts/ is on pytest's pythonpath

REPO = Path(__file__).resolve().parents[2]


def test_distill_reproduction_corpus_is_the_stdlib_with_every_tenth_file_held_out():
    training, heldout = reproduce_distill.stdlib_corpus()
    listed = sorted(str(path) for path in Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    assert heldout == [name for index, name in enumerate(listed) if index % 10 == 9]
    assert training == [name for index, name in enumerate(listed) if index % 10 != 9]
    assert len(heldout) >= 10 and set(training).isdisjoint(heldout)
    assert reproduce_distill.stdlib_corpus(quick=True) == (training[:3], heldout[:1])


@pytest.mark.slow
def test_distill_reproduction_quick_run_reports_teacher_student_and_scratch(tmp_path):
    out, figure = tmp_path / "distill.md", tmp_path / "distill.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce_distill.py"), "--quick", "--threads", "1", "--out", str(out),
         "--figure", str(figure), "--workdir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert figure.stat().st_size > 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results["models"]) == ["teacher", "student, weights copied", "distilled student", "scratch hybrid"]
    assert results["setup"]["kept"] == [3] and results["setup"]["replaced"] == [0, 1, 2]
    summary = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())
    assert results["models"]["distilled student"]["loss"] == summary["heldout"]["student"]["loss"]
    scratch = memlm.MemLMForCausalLM.from_pretrained(tmp_path / "runs" / "scratch")
    student = memlm.MemLMForCausalLM.from_pretrained(tmp_path / "runs" / "student")
    assert scratch.config.mixer_types == student.config.mixer_types == ["gated_deltanet"] * 3 + ["full_attention"]
    text = out.read_text()
    corpus = results["setup"]["corpus"]
    assert (corpus["python"], corpus["training_files"], corpus["heldout_files"]) == (platform.python_version(), 3, 1)
    assert f"Python {corpus['python']} standard library" in text
    for name, row in results["models"].items():
        assert f"| {name} | {row['training']} | {row['loss']:.3f} |" in text
