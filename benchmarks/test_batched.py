"""Several seeds as one batched model, against the same seeds one after another.

Three LeNet-5 (or masker) models with their own initialisation step over the
same composited images, either one model after another or stacked with
``torch.func.stack_module_state`` and run as one model under ``vmap`` (which
turns each convolution into a grouped one). Both variants run the same number
of optimizer steps on the same data, with Adam over the same parameters, so
the images per second compare the two ways of training three seeds directly.
"""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from benchmark import engine
from benchmark.protocol import STANDARD
from benchmarks.conftest import FIGURES, load_average

MODELS = {"baseline": {}, "masker": {"c": -1.0}}
MEMBERS = 3
BATCHED: dict[tuple[str, str], float] = {}


def members(method, params: dict) -> list[torch.nn.Module]:
    return [engine.build_model(method, params, seed, "cpu") for seed in range(MEMBERS)]


def one_after_another(models, batches, budget):
    models = [copy.deepcopy(m) for m in models]
    optimizers = [engine.make_optimizer(m, budget) for m in models]
    for x, y in batches:
        for model, optimizer in zip(models, optimizers):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def stacked(models, batches, budget):
    params, buffers = stack_module_state([copy.deepcopy(m) for m in models])
    optimizer = torch.optim.Adam(params.values(), lr=budget.lr)
    skeleton = copy.deepcopy(models[0]).to("meta")

    def forward(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    batched = vmap(forward, in_dims=(0, 0, None))
    for x, y in batches:
        logits = batched(params, buffers, x)  # [members, batch, classes]
        # The sum of the members' mean losses: each member gets its own gradient.
        loss = F.cross_entropy(
            logits.flatten(0, 1), y.repeat(MEMBERS), reduction="sum"
        ) / len(y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.fixture
def threads(request):
    """Run with this many intra-op threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("how", ["one_after_another", "stacked"])
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_three_seeds(benchmark, workspace, standard_cell, quick, threads, model, how):
    """Images per second (counting every member's images) for three seeds, with
    one intra-op thread (as each `--jobs` worker has) and with two."""
    steps, rounds = (5, 2) if quick else (20, 3)
    budget = STANDARD.budget
    method = workspace.registry.get(model)
    models = members(method, MODELS[model])
    generator = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(standard_cell), generator=generator)
    rows = rows[: steps * budget.batch_size]
    images = engine.prepare_input(standard_cell.images(rows))
    batches = list(
        zip(
            images.split(budget.batch_size),
            standard_cell.label[rows].split(budget.batch_size),
        )
    )
    run = {"one_after_another": one_after_another, "stacked": stacked}[how]

    benchmark.pedantic(
        run, args=(models, batches, budget), rounds=rounds, warmup_rounds=1
    )

    best = MEMBERS * len(images) / min(benchmark.stats.stats.data)
    median = MEMBERS * len(images) / statistics.median(benchmark.stats.stats.data)
    BATCHED[(model, how, threads)] = best
    benchmark.extra_info.update(
        images_per_second=best, median=median, load_average=load_average()
    )
    name = f"{model}, {MEMBERS} seeds {how.replace('_', ' ')}, {threads} thread(s)"
    FIGURES[name] = (best, "images/s")
    if how == "stacked" and (model, "one_after_another", threads) in BATCHED:
        speedup = best / BATCHED[(model, "one_after_another", threads)]
        benchmark.extra_info["speedup"] = round(speedup, 3)
        FIGURES[f"{model}, stacked / one after another, {threads} thread(s)"] = (
            speedup,
            "x",
        )
