"""A method plugin whose model cannot be built, for tests of retries on workers.

Each attempt appends a line to the file named by OOD_BENCH_TEST_ATTEMPTS, so a
test can count how often a cell was tried, in whichever process it ran.
"""

from __future__ import annotations

import os

from benchmark import Method, hookimpl

ATTEMPTS_ENV = "OOD_BENCH_TEST_ATTEMPTS"


def build_model(params: dict):
    """Record the attempt, then fail as a buggy plugin would."""
    path = os.environ.get(ATTEMPTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    raise RuntimeError("this method always explodes")


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="explodes",
            description="Raises when its model is built.",
            build_model=build_model,
        )
    ]
