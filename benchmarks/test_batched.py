"""Several seeds as one stacked model, against the same seeds one after another.

Three seeds of the standard cell (black digits, class size 16) train for the
same number of steps either with ``engine.train`` one seed after another, as
separate cells do, or with ``engine.train_stacked``, which stacks the three
models' parameters and runs them as one model under ``vmap`` (turning each
convolution into a grouped one). Both count every member's images, so the
images per second compare the two ways of training three seeds directly.
"""

from __future__ import annotations

import statistics

import pytest

from benchmark import engine
from benchmark.protocol import STANDARD
from benchmarks.conftest import FIGURES, load_average

MODELS = {"baseline": {}, "masker": {"c": -1.0}}
SEEDS = [0, 1, 2]
BATCHED: dict[tuple[str, str, int], float] = {}


@pytest.fixture(scope="module")
def seed_splits(workspace):
    """The train splits of the standard cell for three seeds."""
    cells = [workspace.splits(STANDARD, "black", 16, seed) for seed in SEEDS]
    return [engine.cell_tensors(cell, workspace.bank)["train"] for cell in cells]


@pytest.mark.parametrize("how", ["one_after_another", "stacked"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_three_seeds(benchmark, workspace, seed_splits, quick, threads, model, how):
    """Images per second (every member's images) for three seeds, with one
    intra-op thread (as each `--jobs` worker has) and with two."""
    steps, rounds = (5, 2) if quick else (20, 3)
    method, params = workspace.registry.get(model), MODELS[model]
    budget = STANDARD.budget

    def one_after_another() -> None:
        for seed, split in zip(SEEDS, seed_splits):
            engine.train(method, params, split, budget, seed, max_steps=steps)

    def stacked() -> None:
        engine.train_stacked(
            method, params, seed_splits, budget, SEEDS, max_steps=steps
        )

    run = {"one_after_another": one_after_another, "stacked": stacked}[how]
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)

    images = len(SEEDS) * steps * budget.batch_size
    best = images / min(benchmark.stats.stats.data)
    median = images / statistics.median(benchmark.stats.stats.data)
    BATCHED[(model, how, threads)] = best
    benchmark.extra_info.update(
        images_per_second=best, median=median, load_average=load_average()
    )
    name = f"{model}, {len(SEEDS)} seeds {how.replace('_', ' ')}, {threads} thread(s)"
    FIGURES[name] = (best, "images/s")
    if how == "stacked" and (model, "one_after_another", threads) in BATCHED:
        speedup = best / BATCHED[(model, "one_after_another", threads)]
        benchmark.extra_info["speedup"] = round(speedup, 3)
        FIGURES[f"{model}, stacked / one after another, {threads} thread(s)"] = (
            speedup,
            "x",
        )
