"""Using both cores: one process with every core as intra-op threads against one
worker process per core with a thread each, timed end to end through the
command line (process start, data load, training, evaluation, storage)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from benchmarks.conftest import FIGURES, load_average

# The cells each sweep runs: four quick cells, or four standard ones. Each
# --jobs 2 worker starts a process, imports torch and loads the data once; a
# sweep of hundreds of cells spreads that over all of them, but two standard
# cells put it all on one cell a worker and understated what --jobs 2 gains.
SWEEPS = {
    "quick": ["--class-sizes", "4,64", "--seeds", "0,1"],
    "standard": ["--class-sizes", "8,16", "--seeds", "0,1", "--variant", "black"],
}
PARAMS = {"baseline": [], "masker": ["--param", "c=-1"]}


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("method", list(PARAMS))
@pytest.mark.parametrize("protocol", list(SWEEPS))
def test_sweep(benchmark, data_root, tmp_path, quick, protocol, method, jobs):
    """Wall time of a small sweep with ``--jobs 1`` (one process, two threads)
    and ``--jobs 2`` (two single-threaded worker processes)."""
    if quick:
        pytest.skip("each sweep takes minutes")
    command = [
        sys.executable, "-m", "benchmark", "run", "--method", method,
        *PARAMS[method], "--protocol", protocol, *SWEEPS[protocol],
        "--jobs", str(jobs), "-q",
    ]  # fmt: skip
    env = {**os.environ, "OOD_BENCH_DATA": str(data_root)}
    rounds = iter(range(100))

    def sweep() -> None:
        results = tmp_path / f"sweep{next(rounds)}.sqlite"
        subprocess.run([*command, "--results", str(results)], env=env, check=True)

    started = time.perf_counter()
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    seconds = time.perf_counter() - started
    benchmark.extra_info["load_average"] = load_average()
    cells = f"4 {protocol} cells"
    FIGURES[f"{cells} of {method}, --jobs {jobs} (s)"] = (seconds, "s")
