"""Splits: which digit goes on which background, fixed by (protocol, variant,
class size, seed).

Splits are index arrays into the digit and background sets, so they are made
from labels and counts alone, without touching pixels. Every split of a cell
is covered by one fingerprint; two results are comparable only if their
fingerprints match.

- Each digit class gets ``class_size`` training backgrounds of its own (its
  pool), disjoint across classes. Pools are prefixes of one seeded
  permutation, so the pools of a smaller class size are prefixes of the pools
  of a larger one.
- ``train`` and ``id_val``: MNIST training digits on their own class's pool.
- ``id_test``: MNIST test digits on their own class's pool.
- ``ood_test``: the same test digits on test backgrounds, never in any pool.
- ``conflict_test``: the same test digits on a background from another
  class's pool, so the shortcut points to a wrong class.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from benchmark.compose import Variant, foreground_colours, get_variant
from benchmark.errors import BenchmarkError
from benchmark.protocol import Protocol

NUM_CLASSES = 10
SPLIT_NAMES = ("train", "id_val", "id_test", "ood_test", "conflict_test")
EVAL_SPLITS = ("id_val", "id_test", "ood_test", "conflict_test")

# Distinct streams of the seeded generator, so that adding one never shifts another.
_STREAM = {
    "pools": 1,
    "digits_train": 2,
    "digits_test": 3,
    "train": 10,
    "id_val": 11,
    "id_test": 12,
    "ood_test": 13,
    "conflict_test": 14,
}


@dataclass(frozen=True)
class Split:
    """One split: parallel arrays, one entry per image."""

    name: str
    digit_source: str  # "train" or "test": which MNIST set digit_index points into
    background_source: (
        str  # "train" or "test": which background set background_index points into
    )
    digit_index: np.ndarray  # int64 [n]
    background_index: np.ndarray  # int64 [n]
    label: np.ndarray  # int64 [n], the digit's class
    foreground: np.ndarray  # uint8 [n, 3], the digit's colour

    def __len__(self) -> int:
        return len(self.label)


@dataclass(frozen=True)
class CellSplits:
    """All splits of one (protocol, variant, class size, seed), with its fingerprint."""

    protocol: Protocol
    variant: Variant
    class_size: int
    seed: int
    pools: np.ndarray  # int64 [10, class_size], training-background indices per class
    splits: dict[str, Split]
    fingerprint: str

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def _rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAM[stream], *more]))


def max_class_size(num_train_backgrounds: int) -> int:
    """The largest class size a background set allows (pools are disjoint)."""
    return num_train_backgrounds // NUM_CLASSES


def check_class_size(class_size: int, num_train_backgrounds: int) -> None:
    largest = max_class_size(num_train_backgrounds)
    if not 1 <= class_size <= largest:
        raise BenchmarkError(
            f"class size {class_size} is out of range: it must be between 1 and "
            f"{largest} ({num_train_backgrounds} training backgrounds shared by "
            f"{NUM_CLASSES} classes)"
        )


def make_pools(seed: int, class_size: int, num_train_backgrounds: int) -> np.ndarray:
    """Disjoint per-class pools of training backgrounds, int64 [10, class_size]."""
    check_class_size(class_size, num_train_backgrounds)
    largest = max_class_size(num_train_backgrounds)
    order = _rng(seed, "pools").permutation(num_train_backgrounds)
    return (
        order[: NUM_CLASSES * largest]
        .reshape(NUM_CLASSES, largest)[:, :class_size]
        .copy()
    )


def make_splits(
    protocol: Protocol,
    variant: str | Variant,
    class_size: int,
    seed: int,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    num_train_backgrounds: int,
    num_test_backgrounds: int,
) -> CellSplits:
    """Build every split of one cell from digit labels and background counts."""
    variant = get_variant(variant) if isinstance(variant, str) else variant
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    pools = make_pools(seed, class_size, num_train_backgrounds)

    n_val = protocol.n_val
    n_train = (
        protocol.n_train if protocol.n_train is not None else len(train_labels) - n_val
    )
    n_test = protocol.n_test if protocol.n_test is not None else len(test_labels)
    if n_val + n_train > len(train_labels) or n_test > len(test_labels):
        raise BenchmarkError(
            f"protocol {protocol.key} needs {n_train + n_val} training and {n_test} test "
            f"digits, but the digit set has {len(train_labels)} and {len(test_labels)}"
        )
    order = _rng(seed, "digits_train").permutation(len(train_labels))
    val_digits = np.sort(order[:n_val])
    train_digits = np.sort(order[n_val : n_val + n_train])
    if n_test == len(test_labels):
        test_digits = np.arange(n_test, dtype=np.int64)
    else:
        test_digits = np.sort(
            _rng(seed, "digits_test").permutation(len(test_labels))[:n_test]
        )

    def own_pool(
        name: str, source: str, digits: np.ndarray, labels: np.ndarray
    ) -> Split:
        rng = _rng(seed, name, class_size)
        y = labels[digits]
        slot = rng.integers(0, class_size, size=len(digits))
        fg = foreground_colours(variant, len(digits), rng)
        return Split(name, source, "train", digits, pools[y, slot], y, fg)

    splits = {
        "train": own_pool("train", "train", train_digits, train_labels),
        "id_val": own_pool("id_val", "train", val_digits, train_labels),
        "id_test": own_pool("id_test", "test", test_digits, test_labels),
    }

    y_test = test_labels[test_digits]
    rng = _rng(seed, "ood_test")
    background = rng.integers(0, num_test_backgrounds, size=len(test_digits))
    fg = foreground_colours(variant, len(test_digits), rng)
    splits["ood_test"] = Split(
        "ood_test", "test", "test", test_digits, background, y_test, fg
    )

    rng = _rng(seed, "conflict_test", class_size)
    other_class = (
        y_test + rng.integers(1, NUM_CLASSES, size=len(test_digits))
    ) % NUM_CLASSES
    slot = rng.integers(0, class_size, size=len(test_digits))
    fg = foreground_colours(variant, len(test_digits), rng)
    splits["conflict_test"] = Split(
        "conflict_test",
        "test",
        "train",
        test_digits,
        pools[other_class, slot],
        y_test,
        fg,
    )

    fingerprint = fingerprint_of(protocol, variant, class_size, seed, splits)
    return CellSplits(protocol, variant, class_size, seed, pools, splits, fingerprint)


def fingerprint_of(
    protocol: Protocol,
    variant: Variant,
    class_size: int,
    seed: int,
    splits: dict[str, Split],
) -> str:
    """A hash of the protocol definition, the cell's coordinates, and every digit,
    background and foreground of every split (16 hex digits)."""
    h = hashlib.sha256()
    h.update(protocol.canonical_json().encode())
    h.update(f"|{variant.name}|{class_size}|{seed}|".encode())
    for name in SPLIT_NAMES:
        split = splits[name]
        h.update(f"{name}:{split.digit_source}:{split.background_source}:".encode())
        for array in (
            split.digit_index,
            split.background_index,
            split.label,
            split.foreground,
        ):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]
