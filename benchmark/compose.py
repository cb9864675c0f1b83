"""Compositing: a digit's intensity is the alpha that blends a foreground colour
over a background.

For a digit intensity ``a`` in [0, 1] (the 28x28 MNIST digit zero-padded to
32x32), a background ``b`` and a foreground ``f``, the image is
``x = (1 - a) * b + a * f``, a 3x32x32 float tensor in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import BenchmarkError
from benchmark.protocol import did_you_mean


@dataclass(frozen=True)
class Variant:
    """A foreground variant: what colour the digit strokes are drawn in."""

    name: str
    description: str
    colour: tuple[int, int, int] | None  # uint8 RGB; None means random per image


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("black", "black digits (foreground 0)", (0, 0, 0)),
        Variant("white", "white digits (foreground 1)", (255, 255, 255)),
        Variant(
            "gray",
            "mid-gray digits (foreground 128/255 in every channel)",
            (128, 128, 128),
        ),
        Variant(
            "color",
            "a random RGB colour per image, drawn from the seed, unrelated to the label",
            None,
        ),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise BenchmarkError(
            f"unknown variant {name!r}{did_you_mean(name, VARIANTS)}; "
            f"choose from {', '.join(VARIANTS)}"
        ) from None


def foreground_colours(
    variant: Variant, n: int, rng: np.random.Generator
) -> np.ndarray:
    """The uint8 [n, 3] foreground colours of ``n`` images of a split."""
    if variant.colour is None:
        return rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return np.broadcast_to(np.asarray(variant.colour, dtype=np.uint8), (n, 3)).copy()


def pad_digits(digits: torch.Tensor) -> torch.Tensor:
    """Zero-pad uint8 [N, 28, 28] digits to [N, 32, 32]."""
    return F.pad(digits, (2, 2, 2, 2))


def composite(
    digits: torch.Tensor, backgrounds: torch.Tensor, foregrounds: torch.Tensor
) -> torch.Tensor:
    """Blend a batch: uint8 digits [B, 32, 32], backgrounds [B, 3, 32, 32] and
    foreground colours [B, 3] give float images [B, 3, 32, 32] in [0, 1]."""
    alpha = digits.unsqueeze(1).float().div_(255.0)
    background = backgrounds.float().div_(255.0)
    foreground = foregrounds.float().div_(255.0)[:, :, None, None]
    return background.addcmul_(alpha, foreground - background)
