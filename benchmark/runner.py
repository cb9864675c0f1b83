"""The runner: plans a sweep of cells, runs the missing ones, stores each result.

A cell is one point of the grid method configuration x variant x class size x
seed. Cells are planned in the driver, which alone writes to the results
store; executing a cell is a pure function of a picklable ``CellTask``, so the
same code runs in-process, in a process pool or on a cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

import benchmark
from benchmark import engine
from benchmark.errors import BenchmarkError
from benchmark.protocol import Protocol, get_protocol
from benchmark.splits import EVAL_SPLITS, CellSplits, check_class_size, make_splits
from benchmark.store import CellRecord, canonical_params, new_owner, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellTask:
    """Everything needed to run one cell anywhere; small and picklable."""

    protocol: str
    method: str
    params_json: str  # canonical JSON of the method's parameters
    variant: str
    class_size: int
    seed: int
    fingerprint: str
    data_root: str
    device: str = "cpu"
    disabled_plugins: tuple[str, ...] = ()
    outside_plugins: bool = True
    executor: str = "local"
    # Modules whose method plugins are registered on top of the installed ones,
    # imported by name in every worker (for tests and embedding).
    extra_plugin_modules: tuple[str, ...] = ()

    @property
    def params(self) -> dict:
        return json.loads(self.params_json)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.fingerprint, self.method, self.params_json)

    def label(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        method = f"{self.method} {params}" if params else self.method
        return f"{method} · {self.variant} · k={self.class_size} · seed {self.seed}"


# ---------------------------------------------------------------- context


@dataclass
class Workspace:
    """What a process needs to run cells: the data in memory and the methods.

    Built once per process and reused across cells, since loading is the slow part.
    """

    data_root: Path
    device: torch.device
    bank: engine.ImageBank
    train_labels: np.ndarray
    test_labels: np.ndarray
    registry: object
    _splits: dict = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        data_root: str | os.PathLike,
        device: str = "cpu",
        disabled_plugins: Iterable[str] = (),
        outside_plugins: bool = True,
        progress: bool = False,
        download: bool = True,
        extra_plugin_modules: Iterable[str] = (),
    ) -> Workspace:
        import importlib

        from benchmark.registry import load_registry
        from benchmark.sources import load_backgrounds, load_digits

        registry = load_registry(
            disable=tuple(disabled_plugins),
            outside=outside_plugins,
            extra_plugins=[importlib.import_module(m) for m in extra_plugin_modules],
        )
        root = Path(data_root)
        digits = load_digits(root, download=download, progress=progress)
        backgrounds = load_backgrounds(root, download=download, progress=progress)
        torch_device = torch.device(device)
        return cls(
            data_root=root,
            device=torch_device,
            bank=engine.ImageBank.from_sources(digits, backgrounds, torch_device),
            train_labels=digits.train_labels.numpy(),
            test_labels=digits.test_labels.numpy(),
            registry=registry,
        )

    @property
    def num_train_backgrounds(self) -> int:
        return len(self.bank.backgrounds["train"])

    def splits(
        self, protocol: Protocol, variant: str, class_size: int, seed: int
    ) -> CellSplits:
        key = (protocol.key, variant, class_size, seed)
        if key not in self._splits:
            self._splits[key] = make_splits(
                protocol,
                variant,
                class_size,
                seed,
                self.train_labels,
                self.test_labels,
                self.num_train_backgrounds,
                len(self.bank.backgrounds["test"]),
            )
        return self._splits[key]


_WORKSPACES: dict[tuple, Workspace] = {}


def workspace_for(task: CellTask) -> Workspace:
    """The process-wide workspace for a task's data root, device and plugins."""
    key = (
        task.data_root,
        task.device,
        task.disabled_plugins,
        task.outside_plugins,
        task.extra_plugin_modules,
    )
    if key not in _WORKSPACES:
        _WORKSPACES[key] = Workspace.load(
            task.data_root,
            task.device,
            task.disabled_plugins,
            task.outside_plugins,
            extra_plugin_modules=task.extra_plugin_modules,
        )
    return _WORKSPACES[key]


# ---------------------------------------------------------------- provenance


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree ood-bench runs from, with '-dirty' if modified."""
    source = Path(benchmark.__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """The device as results record it: for a CPU, its architecture, the vector
    instructions torch's kernels use (they change summation order, so the same
    cell gives other figures on, say, AVX2 than on AVX512) and the thread count."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    machine = platform.processor() or platform.machine()
    capability = torch.backends.cpu.get_cpu_capability()
    return f"cpu:{machine}:{capability}:{torch.get_num_threads()}t"


# ---------------------------------------------------------------- one cell


def failed_record(
    task: CellTask,
    *,
    device: str,
    method_source: str,
    data_fingerprint: str | None = None,
    error: str | None = None,
    started_at: str | None = None,
) -> CellRecord:
    """A 'failed' record of a task with its provenance and no figures yet."""
    protocol = get_protocol(task.protocol)
    started_at = started_at or utc_now()
    return CellRecord(
        protocol=protocol.name,
        protocol_version=protocol.version,
        fingerprint=task.fingerprint,
        method=task.method,
        params=task.params_json,
        variant=task.variant,
        class_size=task.class_size,
        seed=task.seed,
        status="failed",
        error=error,
        id_val_acc=None,
        id_test_acc=None,
        ood_test_acc=None,
        conflict_test_acc=None,
        train_loss=None,
        num_params=None,
        train_seconds=None,
        wall_seconds=None,
        images_per_second=None,
        device=device,
        package_version=benchmark.__version__,
        git_commit=git_commit(),
        torch_version=torch.__version__,
        data_fingerprint=data_fingerprint,
        method_source=method_source,
        executor=task.executor,
        started_at=started_at,
        finished_at=started_at,
    )


def run_cell(
    task: CellTask,
    workspace: Workspace | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> CellRecord:
    """Train and evaluate one cell; a failing plugin gives a 'failed' record, not
    an exception."""
    return run_unit((task,), workspace, on_step)[0]


def stack_key(task: CellTask) -> tuple:
    """Cells with the same key differ only by seed and may train as one stacked
    model."""
    return (task.protocol, task.method, task.params_json, task.variant, task.class_size)


def run_unit(
    tasks: tuple[CellTask, ...],
    workspace: Workspace | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[CellRecord]:
    """Train and evaluate a unit of cells, returning one record per cell.

    A unit of one cell trains on its own. A unit of several cells with the same
    ``stack_key`` (seeds of one configuration) trains them as one stacked model
    (``engine.train_stacked``) when the method allows it, else one after another.
    A failing plugin gives 'failed' records, never an exception.
    """
    ws = workspace or workspace_for(tasks[0])
    protocol = get_protocol(tasks[0].protocol)
    method = ws.registry.get(tasks[0].method)
    params = tasks[0].params
    if len({stack_key(t) for t in tasks}) != 1:
        raise ValueError("a unit of stacked cells must differ only by seed")
    stacked = len(tasks) > 1
    if stacked and not engine.can_stack(method, params):
        return [record for t in tasks for record in run_unit((t,), ws, on_step)]

    started, wall_start = utc_now(), time.perf_counter()
    records = [
        failed_record(
            task,
            device=device_name(ws.device),
            method_source=ws.registry.source(task.method),
            data_fingerprint=ws.bank.data_fingerprint,
            started_at=started,
        )
        for task in tasks
    ]
    if stacked:
        for record in records:
            record.executor = f"{record.executor}+stacked{len(tasks)}"
    try:
        tensors = []
        for task in tasks:
            cell = ws.splits(protocol, task.variant, task.class_size, task.seed)
            if cell.fingerprint != task.fingerprint:
                raise RuntimeError(
                    f"split fingerprint {cell.fingerprint} differs from the planned "
                    f"{task.fingerprint}: the data differ between driver and worker"
                )
            tensors.append(engine.cell_tensors(cell, ws.bank))
        if stacked:
            outcomes = engine.train_stacked(
                method,
                params,
                [t["train"] for t in tensors],
                protocol.budget,
                [task.seed for task in tasks],
                on_step,
            )
        else:
            outcomes = [
                engine.train(
                    method,
                    params,
                    tensors[0]["train"],
                    protocol.budget,
                    tasks[0].seed,
                    on_step,
                )
            ]
        for task, record, outcome, cell_tensors in zip(
            tasks, records, outcomes, tensors
        ):
            _evaluate(task, record, outcome, cell_tensors)
    except Exception as exc:  # noqa: BLE001 - a plugin's bug must not end the sweep
        log.debug("cells %s failed:\n%s", tasks[0].label(), traceback.format_exc())
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        for record in records:
            if record.status == "failed":
                record.error = error
    finished, wall = utc_now(), time.perf_counter() - wall_start
    for record in records:
        record.wall_seconds = wall / len(records)  # an equal share when stacked
        record.finished_at = finished
    return records


def _evaluate(task, record: CellRecord, outcome, tensors) -> None:
    """Fill a record from a finished training run: figures, status, mask stats."""
    record.train_loss = outcome.final_loss
    record.num_params = engine.count_trainable(outcome.model)
    record.train_seconds = outcome.seconds
    record.images_per_second = outcome.images_per_second
    if outcome.diverged:
        record.status = "diverged"
        record.error = (
            f"training loss became {outcome.final_loss} after {outcome.steps} steps"
        )
        return
    for split in EVAL_SPLITS:
        setattr(record, f"{split}_acc", engine.evaluate(outcome.model, tensors[split]))
    stats = engine.mask_stats(outcome.model, tensors["ood_test"])
    if stats is not None:
        record.metrics = json.dumps(stats, sort_keys=True)
        save_model(outcome.model, model_path(task.key))
    record.status = "ok"


def model_path(key: tuple[str, str, str]) -> Path:
    """Where the trained model of cell ``key`` (fingerprint, method, params) is
    kept: in the cache folder, so `ood-bench masks` draws it without retraining."""
    from benchmark.sources import resolve_cache_dir

    digest = hashlib.sha256("|".join(key).encode()).hexdigest()
    return resolve_cache_dir() / "models" / f"{digest[:24]}.pt"


def save_model(model: torch.nn.Module, path: Path) -> None:
    """Write a model's weights atomically; a failure is logged, never fatal,
    since the cell's result does not depend on it."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    except OSError as exc:
        log.warning("could not keep the trained model at %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class SweepPlan:
    """The cells of a sweep, in run order, and which of them are already stored."""

    tasks: list[CellTask]
    done: list[CellTask]

    @property
    def todo(self) -> list[CellTask]:
        done = {t.key for t in self.done}
        return [t for t in self.tasks if t.key not in done]


def plan_sweep(
    workspace: Workspace,
    protocol: Protocol,
    configurations: list[tuple[str, list[dict]]],
    variants: Iterable[str],
    class_sizes: Iterable[int],
    seeds: Iterable[int],
    done_keys: set | frozenset = frozenset(),
    device: str = "cpu",
    executor: str = "local",
    disabled_plugins: tuple[str, ...] = (),
    outside_plugins: bool = True,
    extra_plugin_modules: tuple[str, ...] = (),
    seeds_innermost: bool = False,
) -> SweepPlan:
    """Expand the grid into tasks, ordered so each split is built once and every
    seed of a configuration finishes close together; with ``seeds_innermost``
    the seeds of one configuration come one after another (for stacking)."""
    variants, class_sizes, seeds = list(variants), list(class_sizes), list(seeds)
    for k in class_sizes:
        check_class_size(k, workspace.num_train_backgrounds)
    tasks = []
    for variant in variants:
        for k in class_sizes:
            for seed in seeds:
                fingerprint = workspace.splits(protocol, variant, k, seed).fingerprint
                for method, param_grid in configurations:
                    for params in param_grid:
                        tasks.append(
                            CellTask(
                                protocol=protocol.name,
                                method=method,
                                params_json=canonical_params(params),
                                variant=variant,
                                class_size=k,
                                seed=seed,
                                fingerprint=fingerprint,
                                data_root=str(workspace.data_root),
                                device=device,
                                disabled_plugins=disabled_plugins,
                                outside_plugins=outside_plugins,
                                executor=executor,
                                extra_plugin_modules=extra_plugin_modules,
                            )
                        )
    if seeds_innermost:
        # sorted is stable: within a configuration the seeds keep their order.
        rank = {key: i for i, key in enumerate(dict.fromkeys(map(stack_key, tasks)))}
        tasks.sort(key=lambda t: rank[stack_key(t)])
    done = [t for t in tasks if t.key in done_keys]
    return SweepPlan(tasks, done)


def units_of(tasks: Iterable[CellTask], stack: int) -> Iterator[tuple[CellTask, ...]]:
    """Group consecutive tasks that differ only by seed into units of at most
    ``stack`` cells (units of one when ``stack`` is 1).

    A full unit is handed on at once; only a unit that may still grow waits for
    the next task, so at most one task (already claimed) waits ahead of its unit.
    """
    unit: list[CellTask] = []
    for task in tasks:
        if unit and stack_key(unit[0]) != stack_key(task):
            yield tuple(unit)
            unit = []
        unit.append(task)
        if len(unit) >= stack:
            yield tuple(unit)
            unit = []
    if unit:
        yield tuple(unit)


def run_sweep(
    plan: SweepPlan,
    store,
    executor,
    on_start: Callable[[CellTask], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_done: Callable[[CellTask, CellRecord], None] | None = None,
    on_skip: Callable[[CellTask, str], None] | None = None,
    force: bool = False,
    stack: int = 1,
) -> Iterator[CellRecord]:
    """Run the plan's missing cells on ``executor``, storing each as it finishes.

    Each cell is claimed in the store just before it is handed to the executor,
    so a cell another runner holds is skipped, and each record is written in
    its own transaction as soon as it comes back. Claims of cells that never
    finished (an interrupt) are released on the way out. With ``stack`` > 1,
    up to that many seeds of one configuration are handed over as one unit and
    train as one stacked model (plan them seed-innermost, see ``plan_sweep``).
    """
    owner = new_owner()
    claimed: set[tuple[str, str, str]] = set()

    def claimed_tasks() -> Iterator[CellTask]:
        for task in plan.tasks if force else plan.todo:
            if not force and task.key in store.done_keys():
                if on_skip:
                    on_skip(task, "stored meanwhile by another runner")
                continue
            if not store.claim(task.key, owner):
                if on_skip:
                    on_skip(task, "being run by another runner")
                continue
            claimed.add(task.key)
            yield task

    try:
        units = units_of(claimed_tasks(), stack)
        for task, record in executor.run(units, on_start, on_step):
            store.put(record, replace=force)
            store.release(task.key, owner)
            claimed.discard(task.key)
            if on_done:
                on_done(task, record)
            yield record
    finally:
        for key in claimed:
            store.release(key, owner)


def check_configurations(
    registry, configurations: list[tuple[str, list[dict]]]
) -> None:
    """Validate every configuration's model before any training starts."""
    from benchmark.registry import validate_model

    for method, grid in configurations:
        for params in grid:
            validate_model(registry.get(method), params)


def parse_int_list(values: Iterable[str] | None, what: str) -> list[int] | None:
    """Parse '1,2,4' style CLI values (repeatable) into ints, or a one-line error."""
    if values is None:
        return None
    out = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                out.append(int(part))
            except ValueError:
                raise BenchmarkError(
                    f"{what} must be whole numbers, got {part!r}"
                ) from None
    return out
