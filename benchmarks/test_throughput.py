"""Training throughput of the harness against a bare loop and a per-sample pipeline.

For each model and thread count, the pipelines run in the order bare,
per-sample, harness, so the harness's benchmark can carry the ratios in its
``extra_info``. One intra-op thread is what each `ood-bench run` worker has by
default on CPU; two is one process using both cores of the reference machine.
"""

from __future__ import annotations

import statistics

import pytest

from benchmark.protocol import STANDARD
from benchmarks import pipelines
from benchmarks.conftest import THROUGHPUT, load_average

MODELS = {"baseline": {}, "masker": {"c": -1.0}}
PIPELINES = {
    "bare": pipelines.bare,
    "per_sample": pipelines.per_sample,
    "per_sample_w2": lambda *a: pipelines.per_sample(*a, num_workers=2),
    "harness": pipelines.harness,
}
TARGETS = {"bare": 0.95, "per_sample": 1.6}


@pytest.mark.parametrize("pipeline", list(PIPELINES))
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_training_throughput(
    benchmark, workspace, standard_cell, quick, threads, model, pipeline
):
    """Images per second over a fixed number of steps after a warm-up round."""
    if quick and pipeline == "per_sample_w2":
        pytest.skip("worker processes are left out of the quick run")
    steps, rounds = (10, 2) if quick else (40, 5)
    method = workspace.registry.get(model)
    run = PIPELINES[pipeline](
        method, MODELS[model], standard_cell, STANDARD.budget, steps
    )

    images = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)

    times = benchmark.stats.stats.data
    result = {"best": images / min(times), "median": images / statistics.median(times)}
    THROUGHPUT[(model, threads, pipeline)] = result
    benchmark.extra_info.update(
        images=images, steps=steps, load_average=load_average(), **result
    )
    if pipeline == "harness":
        for other, target in TARGETS.items():
            if (model, threads, other) in THROUGHPUT:
                ratio = result["best"] / THROUGHPUT[(model, threads, other)]["best"]
                benchmark.extra_info[f"ratio_vs_{other}"] = round(ratio, 3)
                benchmark.extra_info[f"target_vs_{other}"] = target
