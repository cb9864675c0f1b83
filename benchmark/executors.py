"""Executors: where cells run. The driver hands them claimed tasks and writes
what comes back to the results store; an executor never touches the store.

- ``LocalExecutor``: one cell at a time in this process, with a progress
  callback per training step.
- ``ProcessExecutor``: ``jobs`` worker processes, each with its share of the
  CPU threads; each worker loads the data once and keeps it.
- ``RayExecutor``: one Ray task per cell on a Ray cluster, with per-cell CPU
  and GPU requests and retries; each Ray worker loads the data once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from benchmark.errors import BenchmarkError
from benchmark.runner import CellTask, Workspace, failed_record, run_unit
from benchmark.store import CellRecord

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
StartCallback = Callable[[CellTask], None]
# What executors are handed: single cells, or units of cells that train stacked.
Work = CellTask | tuple[CellTask, ...]


def as_unit(work: Work) -> tuple[CellTask, ...]:
    return work if isinstance(work, tuple) else (work,)


def _started(unit: tuple[CellTask, ...], on_start: StartCallback | None) -> None:
    if on_start:
        for task in unit:
            on_start(task)


class LocalExecutor:
    """Runs cells one after another in this process."""

    name = "local"

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def run(
        self,
        tasks: Iterable[Work],
        on_start: StartCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[CellTask, CellRecord]]:
        for work in tasks:
            unit = as_unit(work)
            _started(unit, on_start)
            yield from zip(unit, run_unit(unit, self.workspace, on_step))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(unit: tuple[CellTask, ...]) -> list[CellRecord]:
    return run_unit(unit)


class ProcessExecutor:
    """Runs up to ``jobs`` cells at once in worker processes."""

    name = "process"

    def __init__(self, jobs: int, threads_per_job: int | None = None) -> None:
        self.jobs = jobs
        self.threads = threads_per_job or max(1, (os.cpu_count() or 1) // jobs)

    def run(
        self,
        tasks: Iterable[Work],
        on_start: StartCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[CellTask, CellRecord]]:
        # spawn, not fork: forking a process whose OpenMP threads are running can hang.
        context = multiprocessing.get_context("spawn")
        pending: dict[Future, tuple[CellTask, ...]] = {}
        source = iter(tasks)
        with ProcessPoolExecutor(
            self.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.threads,),
        ) as pool:
            try:
                while True:
                    while len(pending) < self.jobs:
                        work = next(source, None)
                        if work is None:
                            break
                        unit = as_unit(work)
                        _started(unit, on_start)
                        pending[pool.submit(_run_in_worker, unit)] = unit
                    if not pending:
                        return
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        unit = pending.pop(future)
                        yield from zip(unit, future.result())
            finally:
                for future in pending:
                    future.cancel()


# ---------------------------------------------------------------- Ray

RAY_INSTALL_HINT = (
    "--executor ray needs Ray; install it with pip install 'ood-bench[ray]'"
)


def require_ray():
    """Import and return the ``ray`` module, or raise a one-line BenchmarkError."""
    try:
        import ray
    except ImportError:
        raise BenchmarkError(RAY_INSTALL_HINT) from None
    return ray


def _run_on_ray(unit: tuple[CellTask, ...], threads: int) -> list[CellRecord]:
    # Ray reuses worker processes, so the workspace cached by workspace_for is
    # loaded once per worker, not once per cell.
    torch.set_num_threads(threads)
    return run_unit(unit)


def lost_cell_record(task: CellTask, error: str) -> CellRecord:
    """A 'failed' record for a cell that never came back from its worker."""
    return failed_record(
        task,
        device=task.device,
        method_source="unknown",
        error=error.splitlines()[0][:500] if error else "the worker was lost",
    )


class RayExecutor:
    """Runs each cell as a Ray task on an existing cluster or on one started here.

    At most as many cells are in flight as the cluster has room for, so cells
    are claimed in the store only when a slot is free. A cell whose record says
    'failed' is run again up to ``retries`` times; Ray itself reruns a task whose
    worker died, up to the same number of times.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        cpus_per_task: float = 1,
        gpus_per_task: float = 0,
        retries: int = 2,
    ) -> None:
        self.ray = require_ray()
        if cpus_per_task <= 0:
            raise BenchmarkError(
                f"--cpus-per-task must be above 0, got {cpus_per_task:g}"
            )
        if gpus_per_task < 0:
            raise BenchmarkError(
                f"--gpus-per-task must be 0 or more, got {gpus_per_task:g}"
            )
        if retries < 0:
            raise BenchmarkError(f"--retries must be 0 or more, got {retries}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.retries = retries

    def _connect(self) -> bool:
        """Join the cluster, or start a local one; True when this call started Ray."""
        ray = self.ray
        if ray.is_initialized():
            return False
        quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if self.address:
                ray.init(address=self.address, **quiet)
            else:
                # "local" starts a private cluster even if `ray start` runs here;
                # --address auto joins that one instead.
                ray.init(address="local", num_cpus=os.cpu_count() or 1, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BenchmarkError(
                f"cannot connect to Ray at {where} ({first}); check --address or "
                f"start a cluster with `ray start --head`"
            ) from None
        return True

    def slots(self) -> int:
        """How many cells the cluster can run at once with this task's requests."""
        resources = self.ray.cluster_resources()
        fits = [resources.get("CPU", 1) / self.cpus_per_task]
        if self.gpus_per_task > 0:
            if resources.get("GPU", 0) < self.gpus_per_task:
                raise BenchmarkError(
                    f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than "
                    f"--gpus-per-task {self.gpus_per_task:g}; lower it or add GPU nodes"
                )
            fits.append(resources["GPU"] / self.gpus_per_task)
        return max(1, int(min(fits) + 1e-9))

    def run(
        self,
        tasks: Iterable[Work],
        on_start: StartCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> Iterator[tuple[CellTask, CellRecord]]:
        ray = self.ray
        started_here = self._connect()
        remote = ray.remote(_run_on_ray).options(
            num_cpus=self.cpus_per_task,
            num_gpus=self.gpus_per_task,
            max_retries=self.retries,
            retry_exceptions=True,
        )
        threads = max(1, int(self.cpus_per_task))
        slots = self.slots()
        log.info("running up to %d cells at once on Ray", slots)

        pending: dict = {}  # object ref -> (unit, attempt)
        source = iter(tasks)
        try:
            while True:
                while len(pending) < slots:
                    work = next(source, None)
                    if work is None:
                        break
                    unit = as_unit(work)
                    _started(unit, on_start)
                    pending[remote.remote(unit, threads)] = (unit, 1)
                if not pending:
                    return
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    unit, attempt = pending.pop(ref)
                    try:
                        records = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        # Ray already retried it; store it as failed so the sweep
                        # goes on and a later run tries the cells again.
                        log.warning("cell %s was lost on Ray: %s", unit[0].label(), exc)
                        error = f"{type(exc).__name__}: {exc}"
                        for task in unit:
                            yield task, lost_cell_record(task, error)
                        continue
                    failed = [r for r in records if r.status == "failed"]
                    if failed and attempt <= self.retries:
                        log.info(
                            "cell %s failed (%s); attempt %d of %d",
                            unit[0].label(),
                            failed[0].error,
                            attempt + 1,
                            self.retries + 1,
                        )
                        pending[remote.remote(unit, threads)] = (unit, attempt + 1)
                        continue
                    yield from zip(unit, records)
        finally:
            # An interrupt or an abandoned generator: stop what is still running.
            for ref in pending:
                ray.cancel(ref)
            if started_here:
                ray.shutdown()
