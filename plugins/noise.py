"""Noise: LeNet-5 trained on images where random pixels are blended with uniform noise.

For each training image, every pixel location is picked independently with
probability ``fraction``; at a picked location all three colour channels become
``(1 - intensity) * x + intensity * u`` with ``u ~ U[0, 1]`` drawn per channel.
The idea is to make background texture less reliable than the digit's shape.

The standard sweep is the 5 x 4 grid fraction in (0.1, 0.25, 0.5, 0.75, 1.0)
by intensity in (0.25, 0.5, 0.75, 1.0): it spans from a light sprinkling to
replacing every pixel by noise, and leaves out intensity 0, which is the
baseline again.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark import Method, Param, hookimpl
from benchmark.plugins.baseline import LeNet5


def add_noise(x: Tensor, params: dict, generator: torch.Generator) -> Tensor:
    """Blend a random ``fraction`` of pixel locations of each image with noise."""
    n, channels, height, width = x.shape

    # Draw on the generator's device, then move, so a CPU generator also
    # serves batches that live on a GPU.
    def uniform(*shape: int) -> Tensor:
        drawn = torch.rand(shape, generator=generator, device=generator.device)
        return drawn.to(device=x.device, dtype=x.dtype)

    picked = uniform(n, 1, height, width) < params["fraction"]
    noise = uniform(n, channels, height, width)
    blended = (1 - params["intensity"]) * x + params["intensity"] * noise
    return torch.where(picked, blended, x)


def build_model(params: dict) -> nn.Module:
    """A fresh LeNet-5; the noise only changes what it is trained on."""
    return LeNet5()


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="noise",
            description="LeNet-5 trained with random pixels blended with noise.",
            build_model=build_model,
            train_transform=add_noise,
            params=(
                Param(
                    "fraction",
                    float,
                    0.5,
                    sweep=(0.1, 0.25, 0.5, 0.75, 1.0),
                    low=0.0,
                    high=1.0,
                    help="probability that a pixel location is blended with noise",
                ),
                Param(
                    "intensity",
                    float,
                    0.5,
                    sweep=(0.25, 0.5, 0.75, 1.0),
                    low=0.0,
                    high=1.0,
                    help="weight of the noise in a blended pixel; 1 replaces it",
                ),
            ),
        )
    ]
