"""Conformance checks for method plugins, on a tiny synthetic split in seconds.

The training loop here is deliberately small but keeps the harness's contract:
the model is built after ``torch.manual_seed(seed)``, the training transform
draws from a ``torch.Generator`` seeded with ``seed``, the loss is
cross-entropy plus the method's extra loss, and Adam updates the model. The
numbers it produces mean nothing; the checks only ask whether a method
behaves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.errors import PluginError
from benchmark.method import Method
from benchmark.registry import validate_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: its name, whether it passed, and why."""

    name: str
    passed: bool
    detail: str


def synthetic_split(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` random [3,32,32] images in [0,1] and labels 0-9, the same for a seed."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return images, labels


def train_steps(
    method: Method,
    params: dict,
    images: Tensor,
    labels: Tensor,
    *,
    seed: int = 0,
    steps: int = 5,
    batch_size: int = 16,
    lr: float = 1e-3,
) -> tuple[nn.Module, list[float]]:
    """Train a fresh model for ``steps`` batches; return it and the loss per step."""
    torch.manual_seed(seed)
    model = method.build_model(dict(params))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []

    model.train()
    for step in range(steps):
        start = (step * batch_size) % len(images)
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        if method.train_transform is not None:
            x = method.train_transform(x, params, generator)

        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if method.extra_loss is not None:
            extra = method.extra_loss(model, x, logits, y, params)
            if not isinstance(extra, Tensor) or extra.dim() != 0:
                raise PluginError(
                    f"method {method.name!r}: extra_loss must return a scalar tensor, "
                    f"got {_shape_of(extra)}"
                )
            loss = loss + extra

        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model, losses


def evaluate(model: nn.Module, images: Tensor, batch_size: int = 32) -> Tensor:
    """The model's logits for ``images`` in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(batch) for batch in images.split(batch_size)])


def run_checks(method: Method, params: dict, steps: int = 5) -> list[CheckResult]:
    """Run every check for one configuration; stop at the first that fails."""
    context: dict = {}  # what one check leaves for the next
    images, labels = synthetic_split()

    def model_check() -> str:
        validate_model(method, params)
        return "maps [2,3,32,32] to [2,10] logits"

    def transform_check() -> str:
        return _check_transform(method, params, images[:16])

    def training_check() -> str:
        spied, calls = _spy_on_transform(method)
        context["calls"] = calls
        model, losses = train_steps(spied, params, images, labels, steps=steps)
        context["model"], context["losses"] = model, losses
        if not all(math.isfinite(loss) for loss in losses):
            raise AssertionError(f"a loss is not finite: {losses}")
        if method.train_transform is not None and calls["train"] != steps:
            raise AssertionError(
                f"train_transform ran {calls['train']} times in {steps} steps"
            )
        return f"{steps} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}"

    def reproducible_check() -> str:
        spied, _ = _spy_on_transform(method)
        model, losses = train_steps(spied, params, images, labels, steps=steps)
        if losses != context["losses"]:
            raise AssertionError(
                f"the same seed gave losses {context['losses']} and then {losses}"
            )
        first, second = context["model"].state_dict(), model.state_dict()
        if any(not torch.equal(first[key], second[key]) for key in first):
            raise AssertionError("the same seed gave two different trained models")
        return "two runs with one seed give bit-identical losses and weights"

    def evaluation_check() -> str:
        model, calls = context["model"], context["calls"]
        calls["evaluating"] = True
        torch.manual_seed(1)
        first = evaluate(model, images)
        torch.manual_seed(2)
        second = evaluate(model, images)
        if calls["eval"]:
            raise AssertionError(f"train_transform ran {calls['eval']} times in eval")
        if not torch.equal(first, second):
            raise AssertionError("evaluating twice gave different logits")
        return "no training transform and no randomness in evaluation"

    checks: list[tuple[str, Callable[[], str]]] = [
        ("model", model_check),
        ("transform", transform_check),
        ("training", training_check),
        ("reproducible", reproducible_check),
        ("evaluation", evaluation_check),
    ]
    results = []
    for name, check in checks:
        try:
            results.append(CheckResult(name, True, check()))
        except Exception as exc:
            log.debug("check %s failed", name, exc_info=True)
            detail = str(exc).strip() or type(exc).__name__
            if not isinstance(exc, (AssertionError, PluginError)):
                detail = f"{type(exc).__name__}: {detail}"
            results.append(CheckResult(name, False, detail.splitlines()[0]))
            break
    return results


def _check_transform(method: Method, params: dict, x: Tensor) -> str:
    """Same seed, different global RNG: same output; input untouched; shape kept."""
    transform = method.train_transform
    if transform is None:
        return "no training transform"
    original = x.clone()
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outputs.append(transform(x, params, torch.Generator().manual_seed(0)))
    if not torch.equal(x, original):
        raise AssertionError("train_transform changed its input in place")
    if not isinstance(outputs[0], Tensor) or outputs[0].shape != x.shape:
        raise AssertionError(
            f"train_transform maps {list(x.shape)} to {_shape_of(outputs[0])}"
        )
    if not torch.equal(outputs[0], outputs[1]):
        raise AssertionError(
            "train_transform draws randomness outside its generator: "
            "one generator seed gave two outputs"
        )
    return "keeps the shape, leaves its input alone, draws only from its generator"


def _spy_on_transform(method: Method) -> tuple[Method, dict]:
    """A copy of ``method`` whose transform counts its calls in training and eval."""
    calls = {"train": 0, "eval": 0, "evaluating": False}
    transform = method.train_transform
    if transform is None:
        return method, calls

    def spy(x: Tensor, params: dict, generator: torch.Generator) -> Tensor:
        calls["eval" if calls["evaluating"] else "train"] += 1
        return transform(x, params, generator)

    return dataclasses.replace(method, train_transform=spy), calls


def _shape_of(value: object) -> str:
    if isinstance(value, Tensor):
        return str(list(value.shape))
    return f"a {type(value).__name__}"
