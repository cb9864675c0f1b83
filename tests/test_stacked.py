"""Several seeds trained as one stacked model follow their separate runs."""

from __future__ import annotations

import pytest
import torch

from benchmark import engine
from benchmark.cli import main
from benchmark.protocol import SMOKE
from benchmark.runner import CellTask, units_of
from benchmark.store import ResultStore

pytestmark = pytest.mark.realdata

SEEDS = [0, 1, 2]


def train_splits(workspace, class_size=8):
    cells = [workspace.splits(SMOKE, "black", class_size, s) for s in SEEDS]
    return [engine.cell_tensors(cell, workspace.bank) for cell in cells]


@pytest.mark.parametrize(
    "name, params",
    [("masker", {"c": -1.0}), ("noise", {"fraction": 0.5, "intensity": 1.0})],
)
def test_each_member_follows_its_separate_run(real_workspace, name, params):
    method = real_workspace.registry.get(name)
    splits = train_splits(real_workspace)
    stacked = engine.train_stacked(
        method, params, [s["train"] for s in splits], SMOKE.budget, SEEDS
    )
    for seed, split, together in zip(SEEDS, splits, stacked):
        alone = engine.train(method, params, split["train"], SMOKE.budget, seed)
        assert together.steps == alone.steps and not together.diverged
        assert together.final_loss == pytest.approx(alone.final_loss, rel=1e-4)
        # Rounding-level differences in the gradients grow over the steps
        # (Adam moves a weight by about lr whatever the gradient's size), so
        # compare with how far training moved each weight: a member stays
        # within a tenth of that from its separate run.
        start = engine.build_model(method, params, seed, "cpu").state_dict()
        for key, a in alone.model.state_dict().items():
            b = together.model.state_dict()[key]
            moved = (a - start[key]).norm()
            assert (a - b).norm() <= 0.1 * moved, key
    # different seeds really are different members
    first, second = (m.model.state_dict() for m in stacked[:2])
    assert not torch.equal(next(iter(first.values())), next(iter(second.values())))


def test_members_start_from_their_own_initialisation(real_workspace):
    method = real_workspace.registry.get("baseline")
    splits = [s["train"] for s in train_splits(real_workspace)]
    untrained = engine.train_stacked(
        method, {}, splits, SMOKE.budget, SEEDS, max_steps=0
    )
    for seed, member in zip(SEEDS, untrained):
        fresh = engine.build_model(method, {}, seed, "cpu")
        for a, b in zip(fresh.parameters(), member.model.parameters()):
            assert torch.equal(a, b)


def test_units_group_only_seeds_of_one_configuration():
    def task(params, seed, k=2):
        return CellTask("smoke", "masker", params, "black", k, seed, f"fp{seed}{k}", "")

    tasks = [task("a", 0), task("a", 1), task("a", 2), task("b", 0), task("b", 0, k=8)]
    units = list(units_of(tasks, 2))
    assert [len(u) for u in units] == [2, 1, 1, 1]
    assert units[0] == (tasks[0], tasks[1])


def test_stack_seeds_stores_every_cell_with_how_it_was_trained(
    tmp_path, data_root, capsys
):
    def run(path, *extra):
        argv = ["run", "--method", "baseline", "--protocol", "smoke"]
        argv += ["--class-sizes", "2", "--seeds", "0,1,2", "--jobs", "1", "-q"]
        argv += ["--results", str(path), "--data-root", str(data_root), *extra]
        assert main(argv) == 0
        with ResultStore(path) as store:
            return store.frame().sort_values("seed").reset_index(drop=True)

    stacked = run(tmp_path / "stacked.sqlite", "--stack-seeds", "3")
    separate = run(tmp_path / "separate.sqlite")
    assert list(stacked["seed"]) == SEEDS and set(stacked["status"]) == {"ok"}
    assert set(stacked["executor"]) == {"local+stacked3"}
    assert set(separate["executor"]) == {"local"}
    assert list(stacked["fingerprint"]) == list(separate["fingerprint"])
    # same cells, same data: the figures agree up to summation order
    difference = (stacked["ood_test_acc"] - separate["ood_test_acc"]).abs()
    assert difference.max() <= 0.02


def test_stack_seeds_below_one_is_refused(tmp_path, data_root, capsys):
    status = main(
        ["run", "--method", "baseline", "--protocol", "smoke", "--stack-seeds", "0"]
        + ["--results", str(tmp_path / "r.sqlite"), "--data-root", str(data_root)]
    )
    assert status == 2
    assert "--stack-seeds must be at least 1" in capsys.readouterr().err
