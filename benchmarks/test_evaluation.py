"""Evaluation of a freshly built model (it costs what a trained one does) on a
standard OOD test split, 10,000 images, at one thread, in the harness's
evaluation batches and in batches of 1,000. Every cell evaluates four splits
(35,000 images) and a masker cell computes its mask once more on the OOD
split, so for the masker this is about a tenth of a cell's wall time."""

from __future__ import annotations

import pytest
import torch

from benchmark import engine
from benchmark.protocol import STANDARD
from benchmarks.conftest import FIGURES

MODELS = {"baseline": {}, "masker": {"c": -1.0}}


@pytest.fixture(scope="module")
def ood_split(workspace):
    cell = workspace.splits(STANDARD, "black", 16, 0)
    return engine.cell_tensors(cell, workspace.bank)["ood_test"]


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("batch_size", [engine.EVAL_BATCH_SIZE, 1000])
@pytest.mark.parametrize("name", list(MODELS))
def test_evaluation(benchmark, quick, workspace, ood_split, threads, name, batch_size):
    method = workspace.registry.get(name)
    model = engine.build_model(method, MODELS[name], 0, torch.device("cpu"))
    engine.evaluate(model, ood_split, batch_size)  # warm the allocator
    benchmark.pedantic(
        engine.evaluate, (model, ood_split, batch_size), rounds=2 if quick else 5
    )
    images_per_second = len(ood_split) / benchmark.stats.stats.median
    benchmark.extra_info["images_per_second"] = images_per_second
    label = "the harness's" if batch_size == engine.EVAL_BATCH_SIZE else "other"
    FIGURES[f"evaluation of {name} at 1 thread, batch {batch_size} ({label})"] = (
        images_per_second,
        "images/s",
    )
