"""Method plugins that break in each way a sweep must survive, for tests/test_faults.py.

Loaded into a run with ``OOD_BENCH_PLUGINS=fault_plugins`` and this folder on
``PYTHONPATH``; not a test module itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark import Method, hookimpl

_builds = 0


class Linear(nn.Module):
    """Ten logits from the raw pixels; the smallest model that trains."""

    def __init__(self, raise_in_training: bool = False) -> None:
        super().__init__()
        self.raise_in_training = raise_in_training
        self.layer = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: Tensor) -> Tensor:
        # Validation runs the model in eval mode, so only training trips this.
        if self.raise_in_training and self.training:
            raise RuntimeError("forward failed in training")
        return self.layer(x.flatten(1))


def build_always_fails(params: dict) -> nn.Module:
    raise RuntimeError("cannot build this model")


def build_fails_after_validation(params: dict) -> nn.Module:
    """Builds once, for the harness's validation, then fails like a lost resource."""
    global _builds
    _builds += 1
    if _builds > 1:
        raise RuntimeError("out of some resource while building")
    return Linear()


def nan_loss(model: nn.Module, x: Tensor, logits: Tensor, y: Tensor, params: dict):
    return logits.mean() * torch.tensor(float("nan"))


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="fault_build",
            description="Its model can never be built.",
            build_model=build_always_fails,
        ),
        Method(
            name="fault_cell_build",
            description="Its model builds for validation, then fails in the cell.",
            build_model=build_fails_after_validation,
        ),
        Method(
            name="fault_train",
            description="Its model raises in its first training step.",
            build_model=lambda params: Linear(raise_in_training=True),
        ),
        Method(
            name="fault_nan",
            description="Its loss is NaN from the first step.",
            build_model=lambda params: Linear(),
            extra_loss=nan_loss,
        ),
    ]
