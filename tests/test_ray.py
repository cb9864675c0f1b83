"""Cells run as Ray tasks on a real local Ray cluster give the local results,
and a failing cell is retried, then stored as failed, while the sweep goes on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmark import runner
from benchmark.cli import main
from benchmark.executors import LocalExecutor, RayExecutor
from benchmark.protocol import get_protocol
from benchmark.store import ResultStore

TESTS = Path(__file__).parent
FIGURES = (
    "id_val_acc",
    "id_test_acc",
    "ood_test_acc",
    "conflict_test_acc",
    "train_loss",
)


@pytest.fixture(scope="module")
def attempts_file(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("attempts") / "explodes.txt"


@pytest.fixture(scope="module")
def cluster(attempts_file):
    """A two-CPU Ray cluster whose workers can import the test plugin module."""
    ray = pytest.importorskip("ray")
    from exploding_method import ATTEMPTS_ENV

    env = {"PYTHONPATH": str(TESTS), ATTEMPTS_ENV: str(attempts_file)}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": env},
    )
    yield
    ray.shutdown()


def _plan(workspace, methods, class_sizes, executor, extra=()):
    return runner.plan_sweep(
        workspace,
        get_protocol("smoke"),
        [(m, [{}]) for m in methods],
        ["black"],
        class_sizes,
        [0],
        executor=executor,
        outside_plugins=False,
        extra_plugin_modules=extra,
    )


@pytest.mark.slow
@pytest.mark.realdata
def test_ray_matches_local(cluster, real_workspace, tmp_path):
    ray_plan = _plan(real_workspace, ["baseline"], [2, 8], "ray")
    with ResultStore(tmp_path / "ray.sqlite") as store:
        executor = RayExecutor(cpus_per_task=1, retries=0)
        on_ray = list(runner.run_sweep(ray_plan, store, executor))
        stored = store.frame("smoke")

    # A Ray task runs with one torch thread per requested CPU; match it here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local_plan = _plan(real_workspace, ["baseline"], [2, 8], "local")
        local = [r for _, r in LocalExecutor(real_workspace).run(local_plan.tasks)]
    finally:
        torch.set_num_threads(threads)

    assert len(stored) == 2
    assert set(stored["executor"]) == {"ray"}
    by_key = {r.key: r for r in on_ray}
    for expected in local:
        got = by_key[expected.key]
        assert got.status == expected.status == "ok"
        for figure in FIGURES:
            assert getattr(got, figure) == getattr(expected, figure), figure


@pytest.mark.slow
@pytest.mark.realdata
def test_failing_cell_is_retried_then_stored(
    cluster, real_workspace, attempts_file, tmp_path
):
    retries = 2
    plan = _plan(
        real_workspace,
        ["explodes", "baseline"],
        [2],
        "ray",
        extra=("exploding_method",),
    )
    with ResultStore(tmp_path / "ray.sqlite") as store:
        records = list(runner.run_sweep(plan, store, RayExecutor(retries=retries)))
        stored = store.frame("smoke").set_index("method")

    assert len(records) == 2
    assert attempts_file.read_text().count("\n") == retries + 1
    assert stored.loc["explodes", "status"] == "failed"
    assert "this method always explodes" in stored.loc["explodes", "error"]
    assert stored.loc["baseline", "status"] == "ok"


def test_without_ray_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without it
    status = main(["run", "--method", "baseline", "--executor", "ray"])
    assert status == 2
    err = capsys.readouterr().err
    assert "pip install 'ood-bench[ray]'" in err
    assert len(err.strip().splitlines()) == 1
