"""Split invariants over random class sizes, seeds and background counts (hypothesis).

tests/test_splits.py checks each invariant at a few chosen points; here the same
invariants must hold wherever hypothesis looks, on synthetic labels.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark.protocol import SMOKE
from benchmark.splits import NUM_CLASSES, make_pools, make_splits

ID_SPLITS = ("train", "id_val", "id_test")
SETTINGS = settings(max_examples=25, deadline=None)

seeds = st.integers(0, 2**32 - 1)
variants = st.sampled_from(["black", "white", "gray", "color"])


@st.composite
def backgrounds_and_class_size(draw, n_min: int = 10, n_max: int = 50_000):
    """A training-background count and a class size it allows."""
    n = draw(st.integers(n_min, n_max))
    k = draw(st.integers(1, n // NUM_CLASSES))
    return n, k


def owners(pools: np.ndarray) -> dict[int, int]:
    return {int(b): c for c in range(NUM_CLASSES) for b in pools[c]}


def build(labels, variant, k, seed, n_train_bg, n_test_bg=1_000):
    train, test = labels
    return make_splits(SMOKE, variant, k, seed, train, test, n_train_bg, n_test_bg)


@SETTINGS
@given(seed=seeds, nk=backgrounds_and_class_size())
def test_pools_are_disjoint_in_range_and_k_per_class(seed, nk):
    n, k = nk
    pools = make_pools(seed, k, n)
    assert pools.shape == (NUM_CLASSES, k)
    assert len(np.unique(pools)) == NUM_CLASSES * k
    assert pools.min() >= 0 and pools.max() < n


@SETTINGS
@given(seed=seeds, nk=backgrounds_and_class_size(), data=st.data())
def test_smaller_pools_are_prefixes_of_larger_ones(seed, nk, data):
    n, k = nk
    smaller = data.draw(st.integers(1, k))
    assert np.array_equal(
        make_pools(seed, k, n)[:, :smaller], make_pools(seed, smaller, n)
    )


@SETTINGS
@given(seed=seeds, nk=backgrounds_and_class_size(n_max=5_000), variant=variants)
def test_every_split_keeps_its_invariants(synthetic_labels, seed, nk, variant):
    n, k = nk
    cell = build(synthetic_labels, variant, k, seed, n)
    owner = owners(cell.pools)
    train_labels, test_labels = synthetic_labels

    for name in ID_SPLITS:
        split = cell[name]
        assert split.background_source == "train"
        assert [owner[int(b)] for b in split.background_index] == split.label.tolist()

    conflict = cell["conflict_test"]
    assert conflict.background_source == "train"
    conflict_owners = np.array([owner[int(b)] for b in conflict.background_index])
    assert (conflict_owners != conflict.label).all()

    ood = cell["ood_test"]
    assert ood.background_source == "test"
    assert 0 <= ood.background_index.min() and ood.background_index.max() < 1_000

    for split in cell.splits.values():
        labels = train_labels if split.digit_source == "train" else test_labels
        assert np.array_equal(split.label, labels[split.digit_index])
    assert not set(cell["train"].digit_index) & set(cell["id_val"].digit_index)
    test_digits = cell["id_test"].digit_index
    for name in ("ood_test", "conflict_test"):
        assert np.array_equal(cell[name].digit_index, test_digits)


@SETTINGS
@given(seed=seeds, nk=backgrounds_and_class_size(n_max=5_000), variant=variants)
def test_splits_are_a_function_of_their_coordinates(
    synthetic_labels, seed, nk, variant
):
    n, k = nk
    first = build(synthetic_labels, variant, k, seed, n)
    again = build(synthetic_labels, variant, k, seed, n)
    assert first.fingerprint == again.fingerprint
    for name, split in first.splits.items():
        other = again[name]
        for field in ("digit_index", "background_index", "label", "foreground"):
            assert np.array_equal(getattr(split, field), getattr(other, field)), field
    assert (
        build(synthetic_labels, variant, k, seed ^ 1, n).fingerprint
        != first.fingerprint
    )
