"""Mask precision: what share of a mask's mass lands on the composited digit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark.engine import SplitTensors, mask_stats


def tiny_split(n: int = 6) -> SplitTensors:
    g = torch.Generator().manual_seed(0)
    digits = torch.randint(0, 256, (n, 32, 32), dtype=torch.uint8, generator=g)
    backgrounds = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return SplitTensors(
        digits=digits,
        backgrounds=backgrounds,
        digit_index=torch.arange(n).flip(0),  # rows do not map to themselves
        background_index=torch.arange(n),
        foreground=torch.zeros(n, 3, dtype=torch.uint8),
        label=torch.zeros(n, dtype=torch.int64),
    )


class FixedMask(nn.Module):
    """A model whose mask is given by a function of the split row's digit."""

    def __init__(self, split: SplitTensors, kind: str) -> None:
        super().__init__()
        self.split, self.kind = split, kind
        self.seen = 0

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(self.seen, self.seen + len(x))
        self.seen += len(x)
        alpha = self.split.digits[self.split.digit_index[rows]].float() / 255
        if self.kind == "ones":
            return torch.ones(len(x), 1, 32, 32)
        if self.kind == "digit":
            return (alpha > 0.5).float().unsqueeze(1)
        return (alpha <= 0.5).float().unsqueeze(1)  # "background"


def digit_share(split: SplitTensors) -> float:
    alpha = split.digits[split.digit_index].float() / 255
    return float((alpha > 0.5).float().mean())


@pytest.mark.parametrize("batch_size", [4, 1000])
def test_an_all_ones_mask_scores_the_digit_pixel_share(batch_size):
    split = tiny_split()
    stats = mask_stats(FixedMask(split, "ones"), split, batch_size=batch_size)
    assert stats["digit_pixel_share"] == pytest.approx(digit_share(split))
    assert stats["mask_digit_mass_share"] == pytest.approx(digit_share(split))
    assert stats["mask_mean_on_digit"] == stats["mask_mean_on_background"] == 1.0


def test_a_mask_on_exactly_the_digit_scores_one_and_its_opposite_zero():
    split = tiny_split()
    on_digit = mask_stats(FixedMask(split, "digit"), split, batch_size=4)
    assert on_digit["mask_digit_mass_share"] == 1.0
    assert on_digit["mask_mean_on_background"] == 0.0
    off_digit = mask_stats(FixedMask(split, "background"), split, batch_size=4)
    assert off_digit["mask_digit_mass_share"] == 0.0
    assert off_digit["mask_mean_on_digit"] == 0.0


def test_a_model_without_a_mask_has_no_mask_stats():
    split = tiny_split()
    assert mask_stats(nn.Linear(3, 3), split) is None


def test_cpu_device_name_records_vector_instructions_and_threads():
    from benchmark.runner import device_name

    name = device_name(torch.device("cpu"))
    capability = torch.backends.cpu.get_cpu_capability()
    assert name.startswith("cpu:") and f":{capability}:" in name
    assert name.endswith(f":{torch.get_num_threads()}t")
