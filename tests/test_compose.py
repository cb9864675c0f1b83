"""The compositing formula x = (1 - a) * background + a * foreground."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.compose import VARIANTS, composite, get_variant, pad_digits
from benchmark.errors import BenchmarkError


def reference(digit, background, foreground):
    a = digit.double()[:, None] / 255
    return (1 - a) * background.double() / 255 + a * foreground.double()[
        :, :, None, None
    ] / 255


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 8))
def test_composite_follows_the_formula(seed, batch):
    g = torch.Generator().manual_seed(seed)
    digit = torch.randint(0, 256, (batch, 32, 32), dtype=torch.uint8, generator=g)
    background = torch.randint(
        0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g
    )
    foreground = torch.randint(0, 256, (batch, 3), dtype=torch.uint8, generator=g)
    x = composite(digit, background, foreground)
    assert x.shape == (batch, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(
        x.double(), reference(digit, background, foreground), atol=1e-6, rtol=0
    )


def test_zero_intensity_keeps_the_background_and_full_intensity_the_foreground():
    background = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    digit = torch.zeros((1, 32, 32), dtype=torch.uint8)
    digit[0, 10:20, 10:20] = 255
    x = composite(digit, background, torch.tensor([[255, 0, 0]], dtype=torch.uint8))
    assert torch.allclose(x[0, :, 0, 0], torch.full((3,), 200 / 255))
    assert torch.allclose(x[0, :, 15, 15], torch.tensor([1.0, 0.0, 0.0]))


def test_padding_centres_the_digit():
    digits = torch.full((2, 28, 28), 7, dtype=torch.uint8)
    padded = pad_digits(digits)
    assert padded.shape == (2, 32, 32)
    assert padded[:, :2].sum() == 0 and padded[:, 2:30, 2:30].eq(7).all()


def test_required_variants_exist():
    assert VARIANTS["black"].colour == (0, 0, 0)
    assert VARIANTS["white"].colour == (255, 255, 255)


def test_unknown_variant_suggests_the_closest():
    with pytest.raises(BenchmarkError, match="did you mean 'white'"):
        get_variant("whit")
