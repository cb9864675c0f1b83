"""Baseline: LeNet-5 trained with cross-entropy alone; the reference for every method.

`LeNet5` lives here because the other built-in methods reuse it as their
classifier.
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark import Method, hookimpl
from benchmark.pooling import MaxPool2x2


class LeNet5(nn.Module):
    """LeNet-5 for 3x32x32 images: two conv/pool stages, then 120, 84, 10 units."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, kernel_size=5),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, n_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def build_model(params: dict) -> nn.Module:
    """A fresh LeNet-5; the baseline has no params."""
    return LeNet5()


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="baseline",
            description="LeNet-5 with plain cross-entropy; no intervention.",
            build_model=build_model,
        )
    ]
