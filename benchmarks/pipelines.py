"""The three training pipelines the throughput benchmarks compare.

Each pipeline builds a fresh model and optimizer from the cell's seed and runs
a fixed number of optimizer steps; only the way images reach the model differs:
the harness (``engine.train``), a bare loop over images composited beforehand,
and per-sample compositing behind a ``DataLoader`` as research code often does.
Each returns what it trained: the model and how many images it saw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark import engine
from benchmark.protocol import Budget


class Trained(NamedTuple):
    images: int  # images trained on
    model: nn.Module


Pipeline = Callable[[], Trained]


def harness(
    method, params: dict, split: engine.SplitTensors, budget: Budget, steps: int
):
    """The harness itself: ``engine.train`` cut short after ``steps`` steps."""

    def run() -> Trained:
        outcome = engine.train(method, params, split, budget, seed=0, max_steps=steps)
        return Trained(outcome.steps * budget.batch_size, outcome.model)

    return run


def bare(
    method, params: dict, split: engine.SplitTensors, budget: Budget, steps: int
) -> Pipeline:
    """The limit for the model: stepping over float images already in memory.

    The images are the harness's own first ``steps`` batches, in its order,
    composited once, here, outside the timed part; the model gets the same
    input preparation as in the harness. The two therefore do the same
    arithmetic and end with the same weights, and the gap between them is the
    harness's own cost.
    """
    first_epoch = next(engine.epoch_batches(len(split), budget, seed=0))
    sizes = [len(r) for r in first_epoch[:steps]]
    rows = torch.cat(first_epoch[:steps])
    images = engine.prepare_input(split.images(rows))
    labels = split.label.index_select(0, rows)
    batches = list(zip(images.split(sizes), labels.split(sizes)))

    def run() -> Trained:
        model = engine.build_model(method, params, 0, images.device)
        optimizer = engine.make_optimizer(model, budget)
        model.train()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return Trained(len(images), model)

    return run


class PerSampleImages(Dataset):
    """Composites one image per ``__getitem__``: float conversion, padding, blending."""

    def __init__(self, split: engine.SplitTensors) -> None:
        # The raw 28x28 digits, as a dataset would hold them before padding.
        self.digits = split.digits[:, 2:30, 2:30].contiguous()
        self.backgrounds = split.backgrounds
        self.digit_index = split.digit_index
        self.background_index = split.background_index
        self.foreground = split.foreground
        self.label = split.label

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.digits[self.digit_index[i]].float() / 255.0
        alpha = F.pad(alpha, (2, 2, 2, 2)).unsqueeze(0)
        background = self.backgrounds[self.background_index[i]].float() / 255.0
        foreground = (self.foreground[i].float() / 255.0).view(3, 1, 1)
        image = (1 - alpha) * background + alpha * foreground
        return image, self.label[i]


def per_sample(
    method,
    params: dict,
    split: engine.SplitTensors,
    budget: Budget,
    steps: int,
    num_workers: int = 0,
) -> Pipeline:
    """Naive research code: a per-sample Dataset behind a shuffling DataLoader.

    The model is used as the plugin builds it, with no harness input preparation.
    Workers, when asked for, persist across rounds so their start-up is not timed.
    """
    loader = DataLoader(
        PerSampleImages(split),
        batch_size=budget.batch_size,
        shuffle=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(0),
    )

    def run() -> Trained:
        torch.manual_seed(engine.seed_streams(0)[0])
        model: nn.Module = method.build_model(dict(params))
        optimizer = engine.make_optimizer(model, budget)
        model.train()
        seen = 0
        for step, (x, y) in enumerate(loader):
            if step == steps:
                break
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        return Trained(seen, model)

    return run
