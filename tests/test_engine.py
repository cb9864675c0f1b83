"""Mask precision: what share of a mask's mass lands on the composited digit,
and evaluation figures that do not depend on the evaluation batch size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmark import engine
from benchmark.engine import SplitTensors, mask_stats
from benchmark.protocol import STANDARD


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


@pytest.fixture(scope="module")
def ood_rows(real_workspace) -> SplitTensors:
    """The first 2,500 rows of a real OOD test split: two full groups of mask
    sums and a part one."""
    cell = real_workspace.splits(STANDARD, "black", 16, 0)
    split = engine.cell_tensors(cell, real_workspace.bank)["ood_test"]
    n = 2500
    return SplitTensors(
        digits=split.digits,
        backgrounds=split.backgrounds,
        digit_index=split.digit_index[:n],
        background_index=split.background_index[:n],
        foreground=split.foreground[:n],
        label=split.label[:n],
    )


def fresh_model(workspace, name: str, params: dict) -> nn.Module:
    method = workspace.registry.get(name)
    return engine.build_model(method, params, 0, torch.device("cpu")).eval()


@pytest.mark.realdata
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("name, params", [("baseline", {}), ("masker", {"c": -1.0})])
def test_logits_do_not_depend_on_the_evaluation_batch_size(
    real_workspace, ood_rows, name, params, threads
):
    """Stored accuracies were computed in batches of another size; they stay valid
    only if each image's logits are the same whatever batch it is evaluated in."""
    model = fresh_model(real_workspace, name, params)
    rows = torch.arange(1000)
    with torch.no_grad():
        outputs = {
            size: torch.cat(
                [
                    model(engine.prepare_input(ood_rows.images(r)))
                    for r in rows.split(size)
                ]
            )
            for size in (engine.EVAL_BATCH_SIZE, 100, 1000)
        }
    assert outputs[100].shape == (1000, 10)
    assert torch.equal(outputs[engine.EVAL_BATCH_SIZE], outputs[1000])
    assert torch.equal(outputs[100], outputs[1000])


@pytest.mark.realdata
def test_mask_stats_do_not_depend_on_the_evaluation_batch_size(
    real_workspace, ood_rows
):
    """Stored mask figures were summed over batches of 1,000; any batch size gives
    them to the last digit."""
    model = fresh_model(real_workspace, "masker", {"c": -1.0})
    with torch.no_grad():
        # masks from about 1e-15 to 1, as trained ones reach, so that sums in
        # double precision are inexact and their grouping shows in the last digit
        model.masker[-2].weight.mul_(1000.0)
    stored_way = mask_stats(model, ood_rows, batch_size=1000)
    assert stored_way is not None
    assert mask_stats(model, ood_rows, batch_size=engine.EVAL_BATCH_SIZE) == stored_way
    assert mask_stats(model, ood_rows, batch_size=100) == stored_way
