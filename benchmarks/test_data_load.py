"""Loading the data cold (decode and cache) and warm, and the peak memory of one cell."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.conftest import FIGURES, load_average

WARM_LOAD_LIMIT_S = 1.0
PEAK_MEMORY_LIMIT_MB = 1536


def _load(root: Path) -> None:
    from benchmark.sources import load_backgrounds, load_digits

    load_digits(root, download=False)
    load_backgrounds(root, download=False)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """Point the cache at a new empty folder per round, so every load is cold."""
    rounds = iter(range(100))

    def setup():
        monkeypatch.setenv("OOD_BENCH_CACHE", str(tmp_path / f"cache{next(rounds)}"))

    return setup


def test_cold_load(benchmark, data_root, fresh_cache, quick):
    """Decoding MNIST and CIFAR-10 and writing the cache."""
    benchmark.pedantic(
        _load, args=(data_root,), setup=fresh_cache, rounds=1 if quick else 2
    )
    benchmark.extra_info["load_average"] = load_average()
    FIGURES["cold load, min (s)"] = (benchmark.stats.stats.min, "s")


def test_warm_load(benchmark, data_root, tmp_path, monkeypatch):
    """Loading from a filled cache; it must take at most a second."""
    monkeypatch.setenv("OOD_BENCH_CACHE", str(tmp_path / "cache"))
    _load(data_root)

    benchmark.pedantic(_load, args=(data_root,), rounds=5, warmup_rounds=1)

    benchmark.extra_info["load_average"] = load_average()
    FIGURES["warm load, min (s)"] = (benchmark.stats.stats.min, "s")
    FIGURES["warm load, median (s)"] = (benchmark.stats.stats.median, "s")
    assert benchmark.stats.stats.min <= WARM_LOAD_LIMIT_S


# A parent of its own, so the peak covers the cell's process and nothing else
# this test session started.
_PEAK_OF_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_peak_memory_of_one_standard_cell(data_root, tmp_path, quick):
    """Peak resident memory of a whole standard cell of the baseline, in a child process."""
    if quick:
        pytest.skip("a whole standard cell takes minutes")
    results = tmp_path / "cell.sqlite"
    command = [
        sys.executable, "-m", "benchmark", "run", "--method", "baseline",
        "--protocol", "standard", "--class-sizes", "16", "--seeds", "0",
        "--variant", "black", "--results", str(results), "-q",
    ]  # fmt: skip
    env = {**os.environ, "OOD_BENCH_DATA": str(data_root)}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_OF_CHILD, *command],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak_mb = int(out.stdout.split()[-1]) / 1024

    with sqlite3.connect(results) as db:
        wall, train = db.execute(
            "select wall_seconds, train_seconds from cells"
        ).fetchone()
    FIGURES["standard cell of baseline, peak RSS (MB)"] = (peak_mb, "MB")
    FIGURES["standard cell of baseline, wall (s)"] = (wall, "s")
    FIGURES["standard cell of baseline, training (s)"] = (train, "s")
    print(json.dumps({"peak_mb": peak_mb, "wall_s": wall, "load": load_average()}))
    assert peak_mb <= PEAK_MEMORY_LIMIT_MB
