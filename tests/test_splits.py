"""Split invariants, on synthetic labels (fast) and on the real data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from benchmark.errors import BenchmarkError
from benchmark.protocol import QUICK, SMOKE, STANDARD
from benchmark.splits import make_pools, make_splits

N_BG_TRAIN, N_BG_TEST = 50_000, 10_000


def build(protocol, labels, variant="black", k=4, seed=0):
    train, test = labels
    return make_splits(protocol, variant, k, seed, train, test, N_BG_TRAIN, N_BG_TEST)


def test_standard_split_sizes(synthetic_labels):
    cell = build(STANDARD, synthetic_labels)
    sizes = {name: len(split) for name, split in cell.splits.items()}
    assert sizes == {
        "train": 55_000,
        "id_val": 5_000,
        "id_test": 10_000,
        "ood_test": 10_000,
        "conflict_test": 10_000,
    }


def test_train_and_val_digits_are_disjoint_and_cover_the_training_set(synthetic_labels):
    cell = build(STANDARD, synthetic_labels)
    train, val = cell["train"].digit_index, cell["id_val"].digit_index
    assert not set(train) & set(val)
    assert len(set(train) | set(val)) == 60_000


@pytest.mark.parametrize("k", [1, 3, 64, 5000])
def test_pools_are_disjoint_and_each_class_has_k(k):
    pools = make_pools(seed=7, class_size=k, num_train_backgrounds=N_BG_TRAIN)
    assert pools.shape == (10, k)
    assert len(np.unique(pools)) == 10 * k


def test_smaller_pools_are_prefixes_of_larger_ones():
    small = make_pools(3, 4, N_BG_TRAIN)
    large = make_pools(3, 64, N_BG_TRAIN)
    assert np.array_equal(large[:, :4], small)


def test_in_distribution_splits_use_only_their_own_class_pool(synthetic_labels):
    cell = build(STANDARD, synthetic_labels, k=8)
    owner = {int(b): c for c in range(10) for b in cell.pools[c]}
    for name in ("train", "id_val", "id_test"):
        split = cell[name]
        assert split.background_source == "train"
        owners = np.array([owner[int(b)] for b in split.background_index])
        assert np.array_equal(owners, split.label), name


def test_conflict_backgrounds_come_from_another_class_pool(synthetic_labels):
    cell = build(STANDARD, synthetic_labels, k=8)
    owner = {int(b): c for c in range(10) for b in cell.pools[c]}
    split = cell["conflict_test"]
    owners = np.array([owner[int(b)] for b in split.background_index])
    assert (owners != split.label).all()
    # every wrong class is used, not just a fixed shift
    assert len(np.unique((owners - split.label) % 10)) == 9


def test_ood_backgrounds_are_test_images(synthetic_labels):
    cell = build(STANDARD, synthetic_labels)
    split = cell["ood_test"]
    assert split.background_source == "test"
    assert split.background_index.max() < N_BG_TEST
    # the whole test set is used, not a handful of images
    assert len(np.unique(split.background_index)) > 5000


def test_same_test_digits_in_every_test_split(synthetic_labels):
    cell = build(QUICK, synthetic_labels)
    idx = cell["id_test"].digit_index
    for name in ("ood_test", "conflict_test"):
        assert np.array_equal(cell[name].digit_index, idx)


def test_splits_are_deterministic_and_seed_dependent(synthetic_labels):
    a, b = (
        build(SMOKE, synthetic_labels, seed=5),
        build(SMOKE, synthetic_labels, seed=5),
    )
    assert a.fingerprint == b.fingerprint
    for name in a.splits:
        assert np.array_equal(a[name].background_index, b[name].background_index)
    assert build(SMOKE, synthetic_labels, seed=6).fingerprint != a.fingerprint


def test_fingerprint_distinguishes_every_coordinate(synthetic_labels):
    base = build(SMOKE, synthetic_labels)
    others = [
        build(SMOKE, synthetic_labels, variant="white"),
        build(SMOKE, synthetic_labels, k=5),
        build(SMOKE, synthetic_labels, seed=1),
        build(QUICK, synthetic_labels),
    ]
    assert len({base.fingerprint, *(o.fingerprint for o in others)}) == 5


def test_color_variant_foreground_is_unrelated_to_label(synthetic_labels):
    split = build(STANDARD, synthetic_labels, variant="color")["train"]
    means = np.array([split.foreground[split.label == c].mean() for c in range(10)])
    assert np.ptp(means) < 5  # every class sees the same distribution of colours
    assert len(np.unique(split.foreground, axis=0)) > 1000


@pytest.mark.parametrize("k", [0, -1, 5001])
def test_class_size_out_of_range_is_a_one_line_error(synthetic_labels, k):
    with pytest.raises(
        BenchmarkError, match=r"class size .* between 1 and 5000"
    ) as info:
        build(STANDARD, synthetic_labels, k=k)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- real data

FINGERPRINT_SCRIPT = """
import sys
from benchmark.runner import Workspace
from benchmark.protocol import STANDARD
ws = Workspace.load(sys.argv[1], outside_plugins=False)
print(ws.splits(STANDARD, "white", 16, 2).fingerprint)
"""


@pytest.mark.realdata
def test_real_splits_are_label_balanced_and_sized(real_workspace):
    cell = real_workspace.splits(STANDARD, "black", 64, 0)
    assert len(cell["train"]) == 55_000 and len(cell["id_test"]) == 10_000
    for name in ("train", "id_test"):
        share = np.bincount(cell[name].label, minlength=10) / len(cell[name])
        assert share.min() > 0.08 and share.max() < 0.12, name


@pytest.mark.realdata
def test_real_fingerprints_match_across_processes(real_workspace, data_root):
    expected = real_workspace.splits(STANDARD, "white", 16, 2).fingerprint
    out = subprocess.run(
        [sys.executable, "-c", FINGERPRINT_SCRIPT, str(data_root)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[-1] == expected
