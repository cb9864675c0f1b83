"""Masker: a small convolutional net learns a per-pixel mask applied before LeNet-5.

The image is first shifted by a constant, ``x' = x + c``; a fully
convolutional masker (3x3 convs 3->16->16->1, ReLU between, sigmoid at the
end) gives one value in [0, 1] per pixel, shared by the colour channels, and
the classifier sees ``mask(x') * x'``. The shift decides what a masked pixel
looks like: with ``c = 0`` it looks black, with ``c = -1`` it looks white,
because white is the value the shift moves to 0. The standard sweep tries c in
(-1, -0.5, 0, 0.5, 1).
"""

from __future__ import annotations

from torch import Tensor, nn

from benchmark import Method, Param, hookimpl
from benchmark.plugins.baseline import LeNet5


class MaskedLeNet5(nn.Module):
    """LeNet-5 that sees each shifted image multiplied by a learnt mask."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift
        self.masker = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 1, kernel_size=3, padding=1),
            nn.Sigmoid(),
        )
        self.classifier = LeNet5()

    def mask(self, x: Tensor) -> Tensor:
        """The [N,1,32,32] mask, in [0, 1], the model applies to raw images ``x``."""
        return self.masker(x + self.shift)

    def forward(self, x: Tensor) -> Tensor:
        shifted = x + self.shift
        return self.classifier(self.masker(shifted) * shifted)


def build_model(params: dict) -> nn.Module:
    """A fresh masker and LeNet-5 for the shift ``params["c"]``."""
    return MaskedLeNet5(params["c"])


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="masker",
            description="A learnt per-pixel mask in front of LeNet-5.",
            build_model=build_model,
            params=(
                Param(
                    "c",
                    float,
                    0.0,
                    sweep=(-1.0, -0.5, 0.0, 0.5, 1.0),
                    low=-2.0,
                    high=2.0,
                    help="constant added to every pixel before masking",
                ),
            ),
        )
    ]
