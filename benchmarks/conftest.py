"""Fixtures for the performance benchmarks, and the summary table printed at the end.

Run with ``python -m pytest benchmarks --benchmark-enable -p no:cacheprovider``;
add ``--quick`` (or set ``OOD_BENCH_QUICK=1``) for a short run that fits in CI.
The benchmarks need the real data in ``OOD_BENCH_DATA`` and skip without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Throughput results by (model, intra-op threads, pipeline): images/s at the
# min and median round.
THROUGHPUT: dict[tuple[str, int, str], dict[str, float]] = {}
# The same from the interleaved rounds: images/s at the median round.
INTERLEAVED: dict[tuple[str, int, str], float] = {}
# Other figures (load times, memory) by name, with their unit.
FIGURES: dict[str, tuple[float, str]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        default=os.environ.get("OOD_BENCH_QUICK", "") not in ("", "0"),
        help="fewer steps and rounds, small enough for CI",
    )


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep decoded-data caches out of the user's cache unless one is named."""
    if "OOD_BENCH_CACHE" not in os.environ:
        os.environ["OOD_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session", autouse=True)
def _harness_allocator():
    """Tune malloc as the harness does before it trains, from the start, so the
    bare loop and the per-sample pipeline share its allocator and the ratios
    compare pipelines, not malloc states (see ``benchmark.allocator``)."""
    from benchmark.allocator import keep_freed_memory

    keep_freed_memory()


@pytest.fixture(scope="session")
def data_root() -> Path:
    value = os.environ.get("OOD_BENCH_DATA")
    if not value:
        pytest.skip("OOD_BENCH_DATA is not set; the benchmarks need MNIST and CIFAR-10")
    return Path(value)


@pytest.fixture(scope="session")
def workspace(data_root):
    from benchmark.runner import Workspace

    return Workspace.load(data_root, outside_plugins=False)


@pytest.fixture(scope="session")
def standard_cell(workspace):
    """The train split of the standard cell (black, class size 16, seed 0)."""
    from benchmark import engine
    from benchmark.protocol import STANDARD

    cell = workspace.splits(STANDARD, "black", 16, 0)
    return engine.cell_tensors(cell, workspace.bank)["train"]


@pytest.fixture
def threads(request):
    """Run with this many intra-op threads (the test's parameter), then restore
    the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not THROUGHPUT and not INTERLEAVED and not FIGURES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("ood-bench performance summary")
    write(f"load average now: {load_average()}")
    if THROUGHPUT:
        pipelines = sorted({p for *_, p in THROUGHPUT}, key=PIPELINE_ORDER.index)
        write("images/s, min-time round / median round:")
        write(
            f"{'model':<10}{'threads':>8}"
            + "".join(f"{p:>20}" for p in pipelines)
            + f"{'a/b':>12}{'a/c':>12}"
        )
        for model, threads in dict.fromkeys((m, t) for m, t, _ in THROUGHPUT):
            row = f"{model:<10}{threads:>8}"
            for p in pipelines:
                r = THROUGHPUT.get((model, threads, p))
                row += (
                    f"{r['best']:>11,.0f} / {r['median']:<6,.0f}" if r else f"{'-':>20}"
                )
            a = THROUGHPUT.get((model, threads, "harness"))
            for other in ("bare", "per_sample"):
                o = THROUGHPUT.get((model, threads, other))
                row += f"{a['best'] / o['best']:>12.2f}" if a and o else f"{'-':>12}"
            write(row)
        write(
            "a/b = harness / bare loop (target >= 0.95); "
            "a/c = harness / per-sample (>= 1.6)"
        )
    if INTERLEAVED:
        write("images/s at the median interleaved round (bare, per-sample, harness):")
        for model, threads in dict.fromkeys((m, t) for m, t, _ in INTERLEAVED):
            rates = [
                INTERLEAVED[(model, threads, p)]
                for p in PIPELINE_ORDER
                if (model, threads, p) in INTERLEAVED
            ]
            write(f"{model:<10}{threads:>8}" + "".join(f"{r:>12,.0f}" for r in rates))
    for name, (value, unit) in FIGURES.items():
        write(f"{name}: {value:,.2f} {unit}")


PIPELINE_ORDER = ["bare", "per_sample", "per_sample_w2", "harness"]
