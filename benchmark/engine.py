"""The training engine: every method trains and is evaluated by this loop.

Digits and backgrounds stay in memory as uint8 tensors; each batch is gathered
by index and composited on the fly, with no per-sample Python work. The
protocol's budget (epochs, batch size, optimizer, learning rate) is the same
for every method, and all randomness (initialisation, batch order, the
method's training transform) comes from generators seeded by the cell's seed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmark.allocator import keep_freed_memory
from benchmark.compose import composite, pad_digits
from benchmark.protocol import Budget
from benchmark.splits import CellSplits, Split

log = logging.getLogger(__name__)

# Evaluation batches of 256 keep the masker's activations in cache: it evaluates
# in 30% less time than in batches of 1000 on the AVX-512 CPU measured
# (benchmarks/test_evaluation.py), with the same logits bit for bit
# (tests/test_engine.py), so stored accuracies do not depend on the size.
EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class ImageBank:
    """Every digit (zero-padded to 32x32) and background, as uint8 tensors on
    one device."""

    digits: dict[str, torch.Tensor]  # "train"/"test" -> uint8 [N, 32, 32]
    backgrounds: dict[str, torch.Tensor]  # "train"/"test" -> uint8 [M, 3, 32, 32]
    data_fingerprint: str | None = None

    @classmethod
    def from_sources(
        cls, digits, backgrounds, device: str | torch.device = "cpu"
    ) -> ImageBank:
        """Build from ``benchmark.sources`` Digits and Backgrounds."""
        from benchmark.sources import data_fingerprint

        return cls(
            digits={
                "train": pad_digits(digits.train_images).to(device),
                "test": pad_digits(digits.test_images).to(device),
            },
            backgrounds={
                "train": backgrounds.train.to(device),
                "test": backgrounds.test.to(device),
            },
            data_fingerprint=data_fingerprint(digits, backgrounds),
        )

    @property
    def device(self) -> torch.device:
        return self.digits["train"].device


@dataclass(frozen=True)
class SplitTensors:
    """One split as index tensors into an ImageBank."""

    digits: torch.Tensor  # the bank's uint8 digit set this split draws from
    backgrounds: torch.Tensor  # the bank's uint8 background set
    digit_index: torch.Tensor  # int64 [n]
    background_index: torch.Tensor  # int64 [n]
    foreground: torch.Tensor  # uint8 [n, 3]
    label: torch.Tensor  # int64 [n]

    @classmethod
    def of(cls, split: Split, bank: ImageBank) -> SplitTensors:
        device = bank.device

        def t(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        return cls(
            digits=bank.digits[split.digit_source],
            backgrounds=bank.backgrounds[split.background_source],
            digit_index=t(split.digit_index),
            background_index=t(split.background_index),
            foreground=t(split.foreground),
            label=t(split.label),
        )

    def __len__(self) -> int:
        return len(self.label)

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """Composite the images at positions ``rows`` of this split: float
        [B, 3, 32, 32]."""
        # index_select gathers whole rows an order of magnitude faster on CPU
        # than advanced indexing, which goes element by element.
        digit_rows = self.digit_index.index_select(0, rows)
        background_rows = self.background_index.index_select(0, rows)
        return composite(
            self.digits.index_select(0, digit_rows),
            self.backgrounds.index_select(0, background_rows),
            self.foreground.index_select(0, rows),
        )


@dataclass
class TrainOutcome:
    """What training one model produced."""

    model: nn.Module
    final_loss: float  # mean training loss over the last epoch
    steps: int
    seconds: float
    images_per_second: float
    diverged: bool


def seed_streams(seed: int) -> tuple[int, int, int]:
    """Independent seeds for initialisation, batch order and the training transform."""
    init, order, transform = np.random.SeedSequence([seed, 0xB0B]).generate_state(3)
    return int(init), int(order), int(transform)


def epoch_batches(
    n: int, budget: Budget, seed: int, device: str | torch.device = "cpu"
) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches of each epoch, as row positions into a training split of ``n``
    images, in the order a run with this seed trains on them."""
    _, order_seed, _ = seed_streams(seed)
    generator = torch.Generator(device="cpu").manual_seed(order_seed)
    for _epoch in range(budget.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        yield order.split(budget.batch_size)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model, budget: Budget) -> torch.optim.Optimizer:
    """The protocol's optimizer over a model's parameters (or an iterable of
    tensors)."""
    params = model.parameters() if isinstance(model, nn.Module) else model
    if budget.optimizer == "adam":
        return torch.optim.Adam(params, lr=budget.lr, weight_decay=budget.weight_decay)
    if budget.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=budget.lr,
            momentum=budget.momentum,
            weight_decay=budget.weight_decay,
        )
    raise ValueError(f"unknown optimizer {budget.optimizer!r}")


# Every model and batch is laid out channels-last: oneDNN's CPU convolutions
# run the masker about 15-20% faster that way and LeNet-5 no slower (see
# docs/performance.md). The layout is the same for every method, so methods
# stay comparable and seeded runs stay reproducible.
CHANNELS_LAST = True


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """Images in the memory layout every model in the harness receives."""
    if CHANNELS_LAST:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def build_model(method, params: dict, seed: int, device: torch.device) -> nn.Module:
    """The method's model, initialised from the cell's seed."""
    init_seed, _, _ = seed_streams(seed)
    torch.manual_seed(init_seed)
    model = method.build_model(dict(params)).to(device)
    if CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    return model


def train(
    method,
    params: dict,
    train_split: SplitTensors,
    budget: Budget,
    seed: int,
    on_step: Callable[[int, int], None] | None = None,
    max_steps: int | None = None,
) -> TrainOutcome:
    """Train the method's model on one split under the budget.

    ``on_step(done, total)`` is called after every optimizer step (for progress
    bars). Training stops early, marked diverged, if the loss is not finite.
    ``max_steps`` cuts training short after that many steps (for benchmarks).
    The first call in a process keeps freed memory in it (``benchmark.allocator``),
    which makes steps faster and changes no result.
    """
    keep_freed_memory()
    device = train_split.label.device
    model = build_model(method, params, seed, device)
    optimizer = make_optimizer(model, budget)
    _, _, transform_seed = seed_streams(seed)
    transform_gen = torch.Generator(device=device).manual_seed(transform_seed)

    n = len(train_split)
    steps_per_epoch = math.ceil(n / budget.batch_size)
    total_steps = steps_per_epoch * budget.epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    step = 0
    images_seen = 0
    epoch_loss = torch.zeros((), device=device)
    diverged = False
    model.train()
    start = time.perf_counter()

    for batches in epoch_batches(n, budget, seed, device):
        epoch_loss.zero_()
        epoch_images = 0
        for rows in batches:
            if step == total_steps:
                break
            x = prepare_input(train_split.images(rows))
            y = train_split.label.index_select(0, rows)
            if method.train_transform is not None:
                x = method.train_transform(x, params, transform_gen)

            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if method.extra_loss is not None:
                loss = loss + method.extra_loss(model, x, logits, y, params)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            epoch_loss += loss.detach() * len(rows)
            step += 1
            images_seen += len(rows)
            epoch_images += len(rows)
            if on_step is not None:
                on_step(step, total_steps)

        # One host sync per epoch: checking every step would stall a GPU pipeline.
        mean_loss = (epoch_loss / max(epoch_images, 1)).item()
        if not math.isfinite(mean_loss):
            diverged = True
            log.warning(
                "%s %s: loss became %s; stopping", method.name, params, mean_loss
            )
            break
        if step == total_steps:
            break

    seconds = time.perf_counter() - start
    return TrainOutcome(
        model=model,
        final_loss=mean_loss,
        steps=step,
        seconds=seconds,
        images_per_second=images_seen / seconds if seconds > 0 else float("nan"),
        diverged=diverged,
    )


def can_stack(method, params: dict) -> bool:
    """Whether several seeds of this configuration can train as one stacked model.

    Stacking needs the model to be a function of its parameters alone: no extra
    loss (which receives the model object) and no buffers (which a model such
    as batch normalisation updates in place while training).
    """
    if method.extra_loss is not None:
        return False
    model = method.build_model(dict(params))
    return not any(True for _ in model.buffers())


def train_stacked(
    method,
    params: dict,
    splits: list[SplitTensors],
    budget: Budget,
    seeds: list[int],
    on_step: Callable[[int, int], None] | None = None,
    max_steps: int | None = None,
) -> list[TrainOutcome]:
    """Train one configuration for several seeds at once, as one batched model.

    Member ``i`` is initialised, ordered and transformed from ``seeds[i]``
    exactly as ``train`` would do it and trains on ``splits[i]``; the members'
    parameters are stacked (``torch.func.stack_module_state``) and the model
    runs under ``vmap``, so each step is one call for all members. The loss is
    the sum of the members' mean losses, so each member's gradient is its own,
    and Adam and SGD act on each parameter element independently. Members
    therefore follow their separate runs up to floating-point summation order
    (vmap turns a convolution over members into a grouped one), not bit for bit.
    """
    from torch.func import functional_call, stack_module_state, vmap

    if len(splits) != len(seeds) or not seeds:
        raise ValueError("train_stacked needs one split per seed")
    n = len(splits[0])
    if any(len(split) != n for split in splits):
        raise ValueError("stacked members must have training splits of one size")
    keep_freed_memory()
    device = splits[0].label.device
    members = [build_model(method, params, seed, device) for seed in seeds]
    stacked, buffers = stack_module_state(members)
    skeleton = copy.deepcopy(members[0]).to("meta")

    def forward(p, b, x):
        return functional_call(skeleton, (p, b), (x,))

    batched = vmap(forward)
    optimizer = make_optimizer(list(stacked.values()), budget)
    transform_gens = [
        torch.Generator(device=device).manual_seed(seed_streams(seed)[2])
        for seed in seeds
    ]

    size = len(seeds)
    steps_per_epoch = math.ceil(n / budget.batch_size)
    total_steps = steps_per_epoch * budget.epochs
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)
    step = images_seen = 0
    epoch_loss = torch.zeros(size, device=device)
    final_loss = torch.full((size,), math.nan)
    diverged_at: list[int | None] = [None] * size
    start = time.perf_counter()

    member_epochs = [epoch_batches(n, budget, seed, device) for seed in seeds]
    for orders in zip(*member_epochs):
        epoch_loss.zero_()
        epoch_images = 0
        for member_rows in zip(*orders):
            if step == total_steps:
                break
            xs, ys = [], []
            for i, rows in enumerate(member_rows):
                x = prepare_input(splits[i].images(rows))
                if method.train_transform is not None:
                    x = method.train_transform(x, params, transform_gens[i])
                xs.append(x)
                ys.append(splits[i].label.index_select(0, rows))
            y = torch.stack(ys)
            logits = batched(stacked, buffers, torch.stack(xs))
            losses = (
                F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
                .view(size, -1)
                .mean(dim=1)
            )

            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()

            batch = len(member_rows[0])
            epoch_loss += losses.detach() * batch
            step += 1
            images_seen += batch
            epoch_images += batch
            if on_step is not None:
                on_step(step, total_steps)

        means = (epoch_loss / max(epoch_images, 1)).cpu()
        for i, mean in enumerate(means.tolist()):
            if diverged_at[i] is None:
                final_loss[i] = mean
                if not math.isfinite(mean):
                    diverged_at[i] = step
        if all(d is not None for d in diverged_at) or step == total_steps:
            break

    seconds = time.perf_counter() - start
    outcomes = []
    for i, model in enumerate(members):
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(stacked[name][i])
        steps = diverged_at[i] if diverged_at[i] is not None else step
        if diverged_at[i] is not None:
            log.warning(
                "%s %s seed %d: loss became %s; stopping",
                method.name,
                params,
                seeds[i],
                float(final_loss[i]),
            )
        # Each member is charged an equal share of the time they trained together.
        outcomes.append(
            TrainOutcome(
                model=model,
                final_loss=float(final_loss[i]),
                steps=steps,
                seconds=seconds / size,
                images_per_second=size * images_seen / seconds
                if seconds > 0
                else float("nan"),
                diverged=diverged_at[i] is not None,
            )
        )
    return outcomes


@torch.no_grad()
def evaluate(
    model: nn.Module, split: SplitTensors, batch_size: int = EVAL_BATCH_SIZE
) -> float:
    """Accuracy of ``model`` on a split, in [0, 1]; no training transform is applied."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=split.label.device)
    rows_all = torch.arange(len(split), device=split.label.device)
    for rows in rows_all.split(batch_size):
        logits = model(prepare_input(split.images(rows)))
        correct += (logits.argmax(dim=1) == split.label[rows]).sum()
    model.train(was_training)
    return correct.item() / len(split)


# A pixel counts as digit where the digit's intensity is above one half.
DIGIT_THRESHOLD = 0.5
# Mask sums are taken over this many rows at a time, whatever the batch the
# masks are computed in, so the figures keep their last digits when the
# evaluation batch size changes.
MASK_SUM_ROWS = 1000


@torch.no_grad()
def mask_stats(
    model: nn.Module, split: SplitTensors, batch_size: int = EVAL_BATCH_SIZE
) -> dict[str, float] | None:
    """Where a model's mask puts its mass on a split: None if it has no ``mask``.

    Compositing knows every digit pixel exactly, so this measures what the mask
    attends to. ``mask_digit_mass_share`` is the share of all mask mass that
    falls on digit pixels; ``digit_pixel_share`` is the share of pixels that are
    digit, which is what a mask of all ones (or any uniform mask) scores.
    Also the mean mask value on digit and on background pixels.
    """
    mask_of = getattr(model, "mask", None)
    if not callable(mask_of):
        return None
    was_training = model.training
    model.eval()
    on_digit = total = digit_pixels = pixels = 0.0
    rows_all = torch.arange(len(split), device=split.label.device)
    for rows in rows_all.split(MASK_SUM_ROWS):
        masks = torch.cat(
            [mask_of(prepare_input(split.images(r))) for r in rows.split(batch_size)]
        ).double()
        alpha = split.digits.index_select(0, split.digit_index.index_select(0, rows))
        digit = (alpha.double() / 255 > DIGIT_THRESHOLD).unsqueeze(1)
        digit = digit.expand_as(masks)
        on_digit += masks[digit].sum().item()
        total += masks.sum().item()
        digit_pixels += digit.sum().item()
        pixels += digit.numel()
    model.train(was_training)
    background_pixels = pixels - digit_pixels
    nan = float("nan")
    return {
        "mask_digit_mass_share": on_digit / total if total > 0 else nan,
        "digit_pixel_share": digit_pixels / pixels,
        "mask_mean_on_digit": on_digit / digit_pixels if digit_pixels else nan,
        "mask_mean_on_background": (total - on_digit) / background_pixels
        if background_pixels
        else nan,
    }


def cell_tensors(cell: CellSplits, bank: ImageBank) -> dict[str, SplitTensors]:
    return {name: SplitTensors.of(split, bank) for name, split in cell.splits.items()}
