"""Shared fixtures: real data from OOD_BENCH_DATA, a private cache, synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep decoded-data caches and default results out of the user's directories.

    One cache for the whole session, so the real data are decoded once.
    """
    if "OOD_BENCH_CACHE" not in os.environ:
        os.environ["OOD_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST and CIFAR-10 (OOD_BENCH_DATA); tests using it skip when it
    is unset."""
    value = os.environ.get("OOD_BENCH_DATA")
    if not value:
        pytest.skip(
            "OOD_BENCH_DATA is not set; real-data tests need MNIST and CIFAR-10"
        )
    root = Path(value)
    if not root.is_dir():
        pytest.fail(f"OOD_BENCH_DATA={value} is not a directory")
    return root


@pytest.fixture(scope="session")
def real_workspace(data_root):
    """The real data loaded once per test session, with built-in methods only."""
    from benchmark.runner import Workspace

    return Workspace.load(data_root, outside_plugins=False)


def _intra_op_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run with one intra-op thread, as each ``ood-bench run`` worker trains on
    CPU, then restore the setting."""
    yield from _intra_op_threads(1)


@pytest.fixture
def threads(request):
    """Run with the test's parameter (``indirect=True``) as the number of
    intra-op threads, then restore the setting."""
    yield from _intra_op_threads(request.param)


@pytest.fixture(scope="session")
def synthetic_labels():
    """Digit labels shaped like MNIST's, without pixels: 60,000 train, 10,000 test."""
    rng = np.random.default_rng(1234)
    return rng.integers(0, 10, 60_000), rng.integers(0, 10, 10_000)
