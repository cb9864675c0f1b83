"""The main job end to end on the real data with the `smoke` protocol: planning,
running, storing, resuming, and the command line's errors."""

from __future__ import annotations

import json

import pytest

from benchmark import engine
from benchmark.cli import main
from benchmark.executors import LocalExecutor
from benchmark.protocol import SMOKE
from benchmark.runner import plan_sweep, run_sweep
from benchmark.store import ResultStore

pytestmark = pytest.mark.realdata


def plan(workspace, store=None, class_sizes=(2, 8), methods=(("baseline", [{}]),)):
    return plan_sweep(
        workspace,
        SMOKE,
        list(methods),
        ["black"],
        list(class_sizes),
        [0],
        done_keys=store.done_keys() if store else set(),
    )


def test_end_to_end_run_stores_every_cell_and_prints_a_leaderboard(
    tmp_path, data_root, capsys
):
    results = tmp_path / "results.sqlite"
    status = main(
        [
            "run",
            "--method",
            "baseline",
            "--method",
            "masker",
            "--param",
            "c=-1",
            "--protocol",
            "smoke",
            "--results",
            str(results),
            "--data-root",
            str(data_root),
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    assert "Leaderboard: smoke@v1" in out and "masker" in out

    with ResultStore(results) as store:
        frame = store.frame()
    assert len(frame) == 4  # 2 configurations x 2 class sizes
    assert set(frame["status"]) == {"ok"}
    assert set(frame["class_size"]) == {2, 8}
    row = frame.iloc[0]
    for column in ("id_val_acc", "id_test_acc", "ood_test_acc", "conflict_test_acc"):
        assert 0.0 <= row[column] <= 1.0
    # every stored result says what produced it
    for column in (
        "fingerprint",
        "torch_version",
        "device",
        "package_version",
        "data_fingerprint",
        "method_source",
        "started_at",
        "finished_at",
    ):
        assert frame[column].notna().all(), column
    assert (frame["num_params"] > 0).all() and (frame["images_per_second"] > 0).all()

    # a model with a mask gets its mask precision stored, and is kept for `masks`
    masker = frame[frame["method"] == "masker"]
    assert frame.loc[frame["method"] == "baseline", "metrics"].isna().all()
    stats = [json.loads(m) for m in masker["metrics"]]
    for s in stats:
        assert 0.0 <= s["mask_digit_mass_share"] <= 1.0
        assert 0.0 < s["digit_pixel_share"] < 0.5
    gallery = tmp_path / "masks.png"
    status = main(
        [
            "masks",
            "--protocol",
            "smoke",
            "--param",
            "c=-1",
            "--class-sizes",
            "2,8",
            "--out",
            str(gallery),
            "--data-root",
            str(data_root),
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and gallery.stat().st_size > 0
    assert "training" not in out  # both models came from the run
    for s in stats:  # and they are the very models the run measured
        assert f"{100 * s['mask_digit_mass_share']:.1f}%" in out


def test_rerun_completes_only_missing_cells(tmp_path, real_workspace):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        first = list(
            run_sweep(
                plan(real_workspace, store, (2,)), store, LocalExecutor(real_workspace)
            )
        )
        assert len(first) == 1
        before = store.frame().set_index("class_size")

        second_plan = plan(real_workspace, store, (2, 8))
        assert len(second_plan.done) == 1 and len(second_plan.todo) == 1
        second = list(run_sweep(second_plan, store, LocalExecutor(real_workspace)))
        assert [r.class_size for r in second] == [8]

        after = store.frame().set_index("class_size")
        assert len(after) == 2
        # the stored cell was neither recomputed nor rewritten
        assert after.loc[2, "finished_at"] == before.loc[2, "finished_at"]
        assert after.loc[2, "ood_test_acc"] == before.loc[2, "ood_test_acc"]

        third_plan = plan(real_workspace, store, (2, 8))
        assert third_plan.todo == []


def test_same_seed_gives_identical_metrics(real_workspace):
    task = plan(real_workspace).tasks[0]
    from benchmark.runner import run_cell

    a, b = run_cell(task, real_workspace), run_cell(task, real_workspace)
    for column in (
        "train_loss",
        "id_val_acc",
        "id_test_acc",
        "ood_test_acc",
        "conflict_test_acc",
    ):
        assert getattr(a, column) == getattr(b, column), column


def test_training_transform_never_reaches_evaluation(real_workspace):
    """Evaluation composites clean images even for a method whose transform wrecks them."""
    method = real_workspace.registry.get("noise")
    cell = real_workspace.splits(SMOKE, "black", 8, 0)
    tensors = engine.cell_tensors(cell, real_workspace.bank)
    outcome = engine.train(
        method, {"fraction": 1.0, "intensity": 1.0}, tensors["train"], SMOKE.budget, 0
    )
    calls = []
    original = method.train_transform

    def spy(x, params, generator):
        calls.append(len(x))
        return original(x, params, generator)

    object.__setattr__(method, "train_transform", spy)
    try:
        engine.evaluate(outcome.model, tensors["id_test"])
    finally:
        object.__setattr__(method, "train_transform", original)
    assert calls == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--protocol", "standrd"], "did you mean 'standard'"),
        (["--variant", "blue"], "unknown variant 'blue'"),
        (["--class-sizes", "0"], "class size 0 is out of range"),
        (["--class-sizes", "5001"], "class size 5001 is out of range"),
        (["--class-sizes", "two"], "--class-sizes must be whole numbers"),
        (["--param", "c=lots"], "c"),
        (["--jobs", "0"], "--jobs must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_root, capsys, argv, message):
    results = tmp_path / "results.sqlite"
    argv = [
        "run",
        "--method",
        "masker",
        "--protocol",
        "smoke",
        "--results",
        str(results),
        "--data-root",
        str(data_root),
        *argv,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1, err


def test_missing_data_root_is_one_line_and_exit_2(tmp_path, capsys):
    argv = [
        "run",
        "--method",
        "baseline",
        "--protocol",
        "smoke",
        "--no-download",
        "--results",
        str(tmp_path / "r.sqlite"),
        "--data-root",
        str(tmp_path / "nowhere"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "OOD_BENCH_DATA" in err


def test_leaderboard_leaves_out_rows_whose_split_fingerprint_the_data_do_not_give(
    tmp_path, data_root, real_workspace, capsys
):
    import sqlite3

    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        list(run_sweep(plan(real_workspace), store, LocalExecutor(real_workspace)))
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE cells SET fingerprint = 'not-these-data' WHERE class_size = 8"
        )
    capsys.readouterr()

    argv = ["leaderboard", "--results", str(path), "--data-root", str(data_root)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    stale = [line for line in out.splitlines() if line.startswith("left out as stale")]
    assert (
        len(stale) == 1 and "baseline: 1 row" in stale[0] and "fingerprint" in stale[0]
    )
