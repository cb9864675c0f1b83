"""Executors: where cells run. The driver hands them claimed tasks and writes
what comes back to the results store; an executor never touches the store.

- ``LocalExecutor``: one cell at a time in this process, with a progress
  callback per training step.
- ``ProcessExecutor``: ``jobs`` worker processes, each with its share of the
  CPU threads; each worker loads the data once and keeps it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from benchmark.runner import CellTask, Workspace, run_cell
from benchmark.store import CellRecord

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
StartCallback = Callable[[CellTask], None]


class LocalExecutor:
    """Runs cells one after another in this process."""

    name = "local"

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def run(
        self,
        tasks: Iterable[CellTask],
        on_start: StartCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[CellTask, CellRecord]]:
        for task in tasks:
            if on_start:
                on_start(task)
            yield task, run_cell(task, self.workspace, on_step)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(task: CellTask) -> CellRecord:
    return run_cell(task)


class ProcessExecutor:
    """Runs up to ``jobs`` cells at once in worker processes."""

    name = "process"

    def __init__(self, jobs: int, threads_per_job: int | None = None) -> None:
        self.jobs = jobs
        self.threads = threads_per_job or max(1, (os.cpu_count() or 1) // jobs)

    def run(
        self,
        tasks: Iterable[CellTask],
        on_start: StartCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[CellTask, CellRecord]]:
        # spawn, not fork: forking a process whose OpenMP threads are running can hang.
        context = multiprocessing.get_context("spawn")
        pending: dict[Future, CellTask] = {}
        source = iter(tasks)
        with ProcessPoolExecutor(
            self.jobs, mp_context=context, initializer=_init_worker, initargs=(self.threads,)
        ) as pool:
            try:
                while True:
                    while len(pending) < self.jobs:
                        task = next(source, None)
                        if task is None:
                            break
                        if on_start:
                            on_start(task)
                        pending[pool.submit(_run_in_worker, task)] = task
                    if not pending:
                        return
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        task = pending.pop(future)
                        yield task, future.result()
            finally:
                for future in pending:
                    future.cancel()
