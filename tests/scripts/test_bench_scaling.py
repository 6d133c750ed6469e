"""The scaling section of scripts/bench_ops.py times each op and length in a fresh process and reports what it read."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench_ops


def test_scaling_child_times_both_passes_and_counts_flops_in_its_own_process():
    child = bench_ops.run_child("scaling_time_child('gated_delta_rule', 128, 'cpu', 1, True)", threads=1)
    assert set(child["us_per_token"]) == {"gated_delta_rule fwd", "gated_delta_rule fwd+bwd"}
    assert all(cost > 0 for cost in child["us_per_token"].values())
    # the backward pass's matmuls are counted too: about twice the forward's
    assert child["flops"]["gated_delta_rule fwd+bwd"] > 2 * child["flops"]["gated_delta_rule fwd"] > 0


def test_scaling_layer_cases_skip_sdpa_above_its_limit(monkeypatch):
    monkeypatch.setattr(bench_ops, "SCALING_SDPA_MAX_T", 64)
    short = bench_ops.scaling_layer_cases(64, torch.device("cpu"))
    long = bench_ops.scaling_layer_cases(128, torch.device("cpu"))
    assert set(short) == {("gdn_layer", "fwd"), ("gdn_layer", "fwd+bwd"), ("sdpa_layer", "fwd"),
                          ("sdpa_layer", "fwd+bwd")}
    assert set(long) == {("gdn_layer", "fwd"), ("gdn_layer", "fwd+bwd")}


def test_a_failing_child_raises_with_its_error():
    with pytest.raises(RuntimeError, match="KeyError: 'no_such_op'"):
        bench_ops.run_child("scaling_time_child('no_such_op', 128, 'cpu', 1, False)", threads=1)


def test_titans_inputs_keep_the_memory_in_normal_floats():
    """Subnormal floats are many times slower on x86: the benchmark's gates must not decay the memory into them."""
    inputs = bench_ops.titans_inputs(8192, torch.device("cpu"))
    with torch.no_grad():
        y = bench_ops.memlm_titans(*inputs)
    tail = y[:, -1024:].abs()
    assert tail.max() > 1e-6
    assert not ((tail > 0) & (tail < torch.finfo(torch.float32).tiny)).any()


def test_scaling_sizes_without_a_length_to_count_flops_at_are_refused_by_name():
    script = Path(bench_ops.__file__)
    done = subprocess.run([sys.executable, str(script), "--scaling", "--scaling-sizes", "8192", "65536"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--scaling-sizes 8192 65536: positive lengths, at least one of them <= 4096" in done.stderr


def test_scaling_processes_below_one_are_refused_by_name():
    script = Path(bench_ops.__file__)
    done = subprocess.run([sys.executable, str(script), "--scaling", "--scaling-processes", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--scaling-processes 0: at least 1 process per op and length" in done.stderr


def test_each_length_is_timed_in_several_processes_and_their_median_reported(monkeypatch):
    monkeypatch.setattr(bench_ops, "SCALING_OPS", {"based": bench_ops.SCALING_OPS["based"]})
    monkeypatch.setattr(bench_ops, "matmul_peak_gflops", lambda device, clock: 100.0)
    result = bench_ops.bench_scaling([64], [], torch.device("cpu"), repeats=1, processes=3)
    rows = {(row["name"], row["mode"]): row for row in result["rows"]}
    assert set(rows) == {("based", "fwd"), ("based", "fwd+bwd"), ("gdn_layer", "fwd"), ("gdn_layer", "fwd+bwd"),
                         ("sdpa_layer", "fwd"), ("sdpa_layer", "fwd+bwd")}
    for row in rows.values():
        costs = row["us_per_token_per_process"]["64"]
        assert len(costs) == 3 and row["us_per_token"]["64"] == sorted(costs)[1]
    assert "median over 3 fresh processes" in result["notes"][0]


def test_the_linear_in_length_claim_reads_every_ops_4k_and_64k_costs_and_ignores_the_layers():
    def row(name, mode, at_4k, at_64k):
        return {"name": name, "mode": mode, "us_per_token": {"1024": 1.0, "4096": at_4k, "65536": at_64k}}

    within = [row(name, mode, 100.0, 114.0) for name in bench_ops.SCALING_OPS for mode in ("fwd", "fwd+bwd")]
    layers = [row("gdn_layer", "fwd+bwd", 100.0, 300.0)]
    assert bench_ops.linear_in_length(within + layers) is True
    assert bench_ops.linear_in_length([*within, row("titans", "fwd+bwd", 100.0, 116.0)]) is False
    assert bench_ops.linear_in_length(within[2:]) is None  # an op not timed
    short_run = [{**r, "us_per_token": {"1024": 1.0, "4096": 2.0}} for r in within]
    assert bench_ops.linear_in_length(short_run) is None
    assert bench_ops.linear_in_length([]) is None


def test_scaling_ops_times_only_the_named_ones(monkeypatch):
    monkeypatch.setattr(bench_ops, "matmul_peak_gflops", lambda device, clock: 100.0)
    result = bench_ops.bench_scaling([64], [], torch.device("cpu"), repeats=1, processes=1, groups=["based"])
    assert {(row["name"], row["mode"]) for row in result["rows"]} == {("based", "fwd"), ("based", "fwd+bwd")}


def test_an_unknown_scaling_op_is_refused_by_name():
    done = subprocess.run([sys.executable, str(Path(bench_ops.__file__)), "--scaling", "--scaling-ops", "mamba"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--scaling-ops: invalid choice: 'mamba'" in done.stderr
