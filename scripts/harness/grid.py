"""Run a grid of independent jobs (training runs of a sweep), in this process or in worker processes.

Small models leave most of a GPU, or of a many-core CPU, idle: several runs at once finish a sweep sooner.
Workers are started with ``spawn`` (safe with CUDA and with threads), so ``function`` and its arguments
must be picklable (a module-level function, plain data).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Hashable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any


def run_grid(function: Callable[..., Any], jobs: dict[Hashable, tuple], workers: int,
             on_result: Callable[[Hashable, Any], None]) -> None:
    """Call ``function(*jobs[key])`` for every key; hand each result to ``on_result(key, result)`` as it comes.

    ``workers == 1`` runs the jobs here in order; more runs up to that many at once in spawned processes
    (results then arrive in completion order). A job that raises does not stop the others: once all have
    ended, a RuntimeError names every failed key and chains the first error.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    failures: dict[Hashable, BaseException] = {}

    def collect(key: Hashable, call: Callable[[], Any]) -> None:
        try:
            result = call()
        except Exception as error:  # noqa: BLE001  (reported below, after the other jobs)
            failures[key] = error
            return
        on_result(key, result)

    if workers == 1:
        for key, args in jobs.items():
            collect(key, lambda args=args: function(*args))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(function, *args): key for key, args in jobs.items()}
            for future in as_completed(futures):
                collect(futures[future], future.result)
    if failures:
        summary = "; ".join(f"{key!r}: {type(error).__name__}: {error}" for key, error in failures.items())
        raise RuntimeError(f"{len(failures)} of {len(jobs)} jobs failed: {summary}") from next(iter(failures.values()))
