"""Protocols: named, versioned, immutable definitions of the benchmark.

A protocol fixes everything that must be equal for results to be compared:
class sizes, foreground variants, seeds, split sizes and the training budget.
Methods never choose their own budget. Changing anything in a protocol that
would change a result means bumping its ``version``; stored results of an
older version are then reported as stale instead of being mixed in.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass

from benchmark.errors import BenchmarkError


@dataclass(frozen=True)
class Budget:
    """The training budget every method gets under a protocol."""

    epochs: int
    batch_size: int
    optimizer: str  # "adam" or "sgd"
    lr: float
    weight_decay: float = 0.0
    momentum: float = 0.9  # used by sgd only


@dataclass(frozen=True)
class Protocol:
    """A named, versioned benchmark definition."""

    name: str
    version: int
    description: str
    class_sizes: tuple[int, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    n_train: (
        int | None
    )  # training digits; None means every MNIST training digit not in id_val
    n_val: int  # held-out training digits for id_val
    n_test: (
        int | None
    )  # test digits for id_test, ood_test, conflict_test; None means all
    budget: Budget

    @property
    def key(self) -> str:
        """``name@version``, the way results and tables refer to a protocol."""
        return f"{self.name}@v{self.version}"

    def definition(self) -> dict:
        """Everything that defines the protocol, as plain JSON-ready data."""
        return asdict(self)

    def canonical_json(self) -> str:
        return json.dumps(self.definition(), sort_keys=True, separators=(",", ":"))


# The standard budget was chosen by measurement (docs/benchmark.md, "How the
# budget was chosen"): the fewest epochs of Adam at which LeNet-5 reaches 97% ID
# accuracy at class size 64 on both black and white digits.
STANDARD = Protocol(
    name="standard",
    version=1,
    description="The benchmark: class sizes 1 to 64, black and white digits, 3 seeds.",
    class_sizes=(1, 2, 4, 8, 16, 32, 64),
    variants=("black", "white"),
    seeds=(0, 1, 2),
    n_train=None,
    n_val=5000,
    n_test=None,
    budget=Budget(epochs=3, batch_size=128, optimizer="adam", lr=2e-3),
)

QUICK = Protocol(
    name="quick",
    version=1,
    description="A small try-out in a few minutes on a laptop CPU; not for publication.",
    class_sizes=(4, 64),
    variants=("black",),
    seeds=(0,),
    n_train=10_000,
    n_val=1000,
    n_test=2000,
    budget=Budget(epochs=2, batch_size=128, optimizer="adam", lr=2e-3),
)

SMOKE = Protocol(
    name="smoke",
    version=1,
    description="Seconds per cell: for tests and plugin checks only; its numbers mean nothing.",
    class_sizes=(2, 8),
    variants=("black",),
    seeds=(0,),
    n_train=1000,
    n_val=200,
    n_test=500,
    budget=Budget(epochs=1, batch_size=100, optimizer="adam", lr=2e-3),
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (STANDARD, QUICK, SMOKE)}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``, or a one-line error naming the closest ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise BenchmarkError(
            f"unknown protocol {name!r}{did_you_mean(name, PROTOCOLS)}; "
            f"run `ood-bench protocols` to list them"
        ) from None


def did_you_mean(word: str, choices) -> str:
    """A ' (did you mean ...?)' suffix listing the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
