"""`ood-bench run`: train and evaluate methods over a sweep, store every cell,
print the ranked leaderboard of what was run."""

from __future__ import annotations

import argparse
import logging
import os
import time

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from benchmark.cli.common import (
    add_data_root,
    add_plugin_switches,
    console,
    default_device,
    percent,
)
from benchmark.errors import BenchmarkError

EXECUTORS = ("local", "ray")

NAME = "run"
HELP = "Train and evaluate methods over their sweep; store every cell and print a ranked table."
EPILOG = """The grid is method configurations x variants x class sizes x seeds; each point
is a cell. Without --param a method runs its standard sweep; without the other
flags the protocol decides. Cells already in the results store (same split
fingerprint, method and parameters) are not run again, so rerunning an
interrupted command completes only what is missing.

examples:
  ood-bench run --method masker --protocol quick
  ood-bench run --method baseline --method noise --class-sizes 1,16,64 --seeds 0
  ood-bench run --method masker --param c=-1,0,1 --variant black
  ood-bench run --method all --protocol standard --results study.sqlite
  ood-bench run --method all --executor ray --address auto --gpus-per-task 0.25
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        action="append",
        required=True,
        metavar="NAME",
        help="method to run (repeatable), or 'all'; see `ood-bench methods`",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run these parameter values instead of the standard sweep (repeatable)",
    )
    parser.add_argument(
        "--protocol", default="standard", help="protocol name (default: standard)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME",
        help="foreground variant (repeatable)",
    )
    parser.add_argument(
        "--class-sizes", action="append", metavar="K[,K...]", help="class sizes"
    )
    parser.add_argument("--seeds", action="append", metavar="S[,S...]", help="seeds")
    parser.add_argument(
        "--results",
        metavar="PATH",
        help="results database (default: $OOD_BENCH_RESULTS, else results/ood-bench.sqlite)",
    )
    parser.add_argument(
        "--force", action="store_true", help="recompute cells already stored"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="cells to run at once in worker processes on this machine "
        "(default: one per core on cpu, else 1)",
    )
    parser.add_argument(
        "--stack-seeds",
        type=int,
        default=1,
        metavar="N",
        help="train up to N seeds of a configuration at once as one batched model "
        "(vmap over stacked parameters); slower than separate cells on the CPUs "
        "measured in docs/performance.md, so off (1) by default",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where cells run: this machine (local) or a Ray cluster (ray)",
    )
    ray = parser.add_argument_group("Ray (with --executor ray; see docs/ray.md)")
    ray.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="Ray cluster to join, or 'auto' for the one started on this machine "
        "(default: $RAY_ADDRESS, else a private cluster started here)",
    )
    ray.add_argument(
        "--cpus-per-task",
        type=float,
        default=1,
        metavar="N",
        help="CPUs Ray reserves for each cell; also its torch threads (default: 1)",
    )
    ray.add_argument(
        "--gpus-per-task",
        type=float,
        default=0,
        metavar="N",
        help="GPUs Ray reserves for each cell; 0.25 puts four cells on a GPU "
        "(default: 0)",
    )
    ray.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="times a failed cell is run again before it is stored as failed "
        "(default: 2)",
    )
    add_data_root(parser)
    add_plugin_switches(parser)
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or per-cell lines"
    )
    noise.add_argument(
        "-v", "--verbose", action="store_true", help="log debugging detail"
    )


def run(args: argparse.Namespace) -> int:
    from benchmark import runner
    from benchmark.compose import get_variant
    from benchmark.protocol import get_protocol
    from benchmark.sources import resolve_data_root
    from benchmark.store import ResultStore, default_results_path

    if args.verbose:
        logging.getLogger("benchmark").setLevel(logging.DEBUG)
    protocol = get_protocol(args.protocol)
    variants = args.variant or list(protocol.variants)
    for v in variants:
        get_variant(v)
    class_sizes = runner.parse_int_list(args.class_sizes, "--class-sizes") or list(
        protocol.class_sizes
    )
    seeds = runner.parse_int_list(args.seeds, "--seeds") or list(protocol.seeds)
    if args.stack_seeds < 1:
        raise BenchmarkError(
            f"--stack-seeds must be at least 1, got {args.stack_seeds}"
        )
    if args.executor == "ray":
        device = _ray_device(args)
    else:
        device = args.device or default_device()
        _check_device(device)

    # Open the store first: a bad results path must fail before any data loads.
    store = ResultStore(args.results or default_results_path())
    with store:
        workspace = runner.Workspace.load(
            resolve_data_root(args.data_root),
            # With Ray, cells run on the cluster's devices; planning needs only a CPU.
            device="cpu" if args.executor == "ray" else device,
            disabled_plugins=tuple(args.disable),
            outside_plugins=not args.no_outside_plugins,
            progress=not args.quiet,
            download=not args.no_download,
        )
        configurations = _configurations(workspace.registry, args.method, args.param)
        runner.check_configurations(workspace.registry, configurations)
        if args.jobs is None:
            n_cells = sum(len(grid) for _, grid in configurations)
            n_cells *= len(variants) * len(class_sizes) * len(seeds)
            args.jobs = default_jobs(device, n_cells)
        plan = runner.plan_sweep(
            workspace,
            protocol,
            configurations,
            variants,
            class_sizes,
            seeds,
            done_keys=set() if args.force else store.done_keys(),
            device=device,
            executor=args.executor
            if args.executor != "local" or args.jobs == 1
            else "process",
            disabled_plugins=tuple(args.disable),
            outside_plugins=not args.no_outside_plugins,
            seeds_innermost=args.stack_seeds > 1,
        )
        todo = plan.tasks if args.force else plan.todo
        n_configs = sum(len(grid) for _, grid in configurations)
        if not args.quiet:
            console.print(
                f"{protocol.key}: {len(plan.tasks)} cells ({n_configs} configurations x "
                f"{len(variants)} variants x {len(class_sizes)} class sizes x {len(seeds)} seeds); "
                f"{len(plan.tasks) - len(todo)} already stored, {len(todo)} to run on {device}; "
                f"results in {store.path}"
            )
        started = time.perf_counter()
        records = _execute(plan, store, workspace, args)
        failed = sum(r.status != "ok" for r in records)
        if not args.quiet:
            console.print(
                f"ran {len(records)} cells in {time.perf_counter() - started:.0f} s"
                + (f"; {failed} failed or diverged" if failed else "")
            )
        _print_leaderboard(store, protocol, plan)
    return 0


def _check_device(device: str) -> None:
    import torch

    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkError(
            f"device {device!r} is not usable here ({first}); pass --device cpu"
        ) from None


def _ray_device(args: argparse.Namespace) -> str:
    """The device Ray cells run on; checked before any data loads."""
    from benchmark.executors import require_ray

    require_ray()
    if args.jobs not in (None, 1):
        raise BenchmarkError(
            "--jobs is for --executor local; with Ray, --cpus-per-task and "
            "--gpus-per-task decide how many cells run at once"
        )
    device = args.device or ("cuda" if args.gpus_per_task > 0 else "cpu")
    if device.startswith("cuda") and args.gpus_per_task <= 0:
        raise BenchmarkError(
            f"--device {device} with --executor ray needs --gpus-per-task "
            f"(e.g. 1, or 0.25 to put four cells on a GPU)"
        )
    return device


def _configurations(registry, method_names: list[str], overrides: list[str]):
    """(method, parameter grid) pairs; each --param goes to the methods that declare it."""
    names = []
    for name in method_names:
        names.extend(registry.methods if name == "all" else [name])
    methods = [registry.get(name) for name in dict.fromkeys(names)]
    keys = {o.split("=", 1)[0].strip() for o in overrides}
    declared = {p.name for m in methods for p in m.params}
    unknown = keys - declared
    if unknown and len(methods) > 1:
        raise BenchmarkError(
            f"no chosen method has a parameter {min(unknown)!r}; "
            f"see `ood-bench methods` for each method's parameters"
        )
    configurations = []
    for method in methods:
        own = [
            o
            for o in overrides
            if len(methods) == 1
            or o.split("=", 1)[0].strip() in {p.name for p in method.params}
        ]
        configurations.append((method.name, registry.parse_params(method, own)))
    return configurations


def _execute(plan, store, workspace, args) -> list:
    from benchmark import runner

    records = []
    todo = plan.tasks if args.force else plan.todo
    executor = make_executor(args, workspace)
    if args.quiet:
        return list(
            runner.run_sweep(
                plan, store, executor, force=args.force, stack=args.stack_seeds
            )
        )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task("cells", total=len(todo))
        current = progress.add_task("", total=1, visible=False)

        running: dict[tuple, str] = {}

        def show_running():
            # One cell in this process shows its steps; worker processes report
            # only when a cell ends, so list what is running instead.
            if len(running) == 1:
                description = f"  {next(iter(running.values()))}"
            else:
                description = f"  {len(running)} running: " + "; ".join(
                    running.values()
                )
            progress.update(current, description=description, visible=bool(running))

        def on_start(task):
            running[task.key] = task.label()
            if len(running) == 1:
                progress.reset(current, total=1)
            show_running()

        def on_step(done, total):
            progress.update(current, completed=done, total=total)

        def on_done(task, record):
            running.pop(task.key, None)
            show_running()
            progress.advance(overall)
            progress.console.print(_cell_line(task, record))

        def on_skip(task, why):
            progress.advance(overall)
            progress.console.print(f"[dim]skipped {task.label()}: {why}[/]")

        records.extend(
            runner.run_sweep(
                plan,
                store,
                executor,
                on_start,
                on_step,
                on_done,
                on_skip,
                force=args.force,
                stack=args.stack_seeds,
            )
        )
        progress.update(current, visible=False)
    return records


def default_jobs(device: str, n_cells: int) -> int:
    """One worker per core on a CPU, one process on an accelerator.

    On CPU, one single-threaded process per core was never slower than one
    process using every core, and 1.6-2.3x faster while other processes shared
    the cores (docs/performance.md).
    """
    if device != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, n_cells))


def make_executor(args, workspace):
    """The executor the command line asks for."""
    from benchmark.executors import LocalExecutor, ProcessExecutor, RayExecutor

    if args.executor == "ray":
        return RayExecutor(
            address=args.address,
            cpus_per_task=args.cpus_per_task,
            gpus_per_task=args.gpus_per_task,
            retries=args.retries,
        )
    if args.jobs is None:
        args.jobs = 1
    if args.jobs < 1:
        raise BenchmarkError(f"--jobs must be at least 1, got {args.jobs}")
    if args.jobs > 1:
        return ProcessExecutor(args.jobs)
    return LocalExecutor(workspace)


def _cell_line(task, record) -> str:
    if record.status != "ok":
        return f"[red]{record.status}[/] {task.label()}: {record.error}"
    return (
        f"{task.label()}: ID {percent(record.id_test_acc)}  OOD {percent(record.ood_test_acc)}  "
        f"conflict {percent(record.conflict_test_acc)}  loss {record.train_loss:.3f}  "
        f"{record.wall_seconds:.1f} s  {record.images_per_second:,.0f} img/s"
    )


def _print_leaderboard(store, protocol, plan) -> None:
    from benchmark import leaderboard

    keys = {(t.fingerprint, t.method, t.params_json) for t in plan.tasks}
    frame = store.frame(protocol.name)
    if frame.empty:
        return
    mask = [
        k in keys for k in zip(frame["fingerprint"], frame["method"], frame["params"])
    ]
    frame = frame[mask]
    if frame.empty:
        return
    board = leaderboard.aggregate(frame, protocol)
    leaderboard.render_rich(board, console)
