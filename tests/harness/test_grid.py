import pytest

from harness.grid import run_grid


def square_or_fail(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_run_grid_returns_every_result(workers):
    results = {}
    run_grid(square_or_fail, {k: (k,) for k in range(4)}, workers, results.__setitem__)
    assert results == {0: 0, 1: 1, 2: 4, 3: 9}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_job_does_not_stop_the_others(workers):
    results = {}
    with pytest.raises(RuntimeError, match=r"1 of 3 jobs failed: -1: ValueError: negative -1"):
        run_grid(square_or_fail, {1: (1,), -1: (-1,), 2: (2,)}, workers, results.__setitem__)
    assert results == {1: 1, 2: 4}


def test_run_grid_rejects_zero_workers():
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        run_grid(square_or_fail, {}, 0, print)
