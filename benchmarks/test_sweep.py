"""Using both cores: one process with every core as intra-op threads against one
worker process per core with a thread each, on a sweep of four quick cells."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks.conftest import FIGURES, load_average


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("method", ["baseline", "masker"])
def test_quick_sweep(benchmark, data_root, tmp_path, quick, method, jobs):
    """Wall time of four quick cells (class sizes 4 and 64, seeds 0 and 1)."""
    if quick:
        pytest.skip("four cells take minutes")
    command = [
        sys.executable, "-m", "benchmark", "run", "--method", method,
        "--param", "c=-1" if method == "masker" else "", "--protocol", "quick",
        "--class-sizes", "4,64", "--seeds", "0,1", "--jobs", str(jobs), "-q",
    ]  # fmt: skip
    if method != "masker":
        command.remove("--param")
        command.remove("")
    env = {**os.environ, "OOD_BENCH_DATA": str(data_root)}
    rounds = iter(range(100))

    def sweep() -> None:
        results = tmp_path / f"sweep{next(rounds)}.sqlite"
        subprocess.run([*command, "--results", str(results)], env=env, check=True)

    started = time.perf_counter()
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    benchmark.extra_info["load_average"] = load_average()
    FIGURES[f"4 quick cells of {method}, --jobs {jobs} (s)"] = (seconds, "s")
