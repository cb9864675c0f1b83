"""The published study holds: one of its cells, recomputed with the code as it
is now on the kind of CPU that produced it, gives the stored figures bit for
bit, and its page is what ``ood-bench leaderboard`` writes for the stored rows.
A change to the data pipeline, the splits, the engine or a built-in method that
would move published numbers fails here, and so does a page edited by hand.

Figures only repeat on the same kind of CPU and thread count (README, "Known
limits"), so the test picks the cheapest stored cell whose device is this
machine's with one thread, and skips where the study has none.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmark.protocol import STANDARD
from benchmark.runner import device_name, plan_sweep, run_cell
from benchmark.store import ResultStore

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

STUDY = Path(__file__).parents[1] / "leaderboards" / "standard" / "results.sqlite"

# Rows stored before the device named the CPU's vector instructions. Of those,
# the baseline's ran on an AVX2 machine (leaderboards/standard/NOTES.md); the
# others ran on an AVX-512 one, whose later rows name it, so they are not needed.
LEGACY = {"cpu:x86_64:AVX2:1t": ("cpu:x86_64:1t", "baseline")}

FIGURES = [
    "train_loss",
    "id_val_acc",
    "id_test_acc",
    "ood_test_acc",
    "conflict_test_acc",
]


@pytest.fixture
def study_copy(tmp_path) -> Path:
    """A copy of the study's results file, so the published one stays untouched."""
    copy = tmp_path / "study.sqlite"
    shutil.copyfile(STUDY, copy)
    return copy


def test_a_published_cell_reproduces_bit_for_bit(
    real_workspace, study_copy, one_thread
):
    here = device_name(torch.device("cpu"))
    with ResultStore(study_copy) as store:
        rows = store.frame(STANDARD.name)
    if here in LEGACY:
        device, method = LEGACY[here]
        rows = rows[(rows["device"] == device) & (rows["method"] == method)]
    else:
        rows = rows[rows["device"] == here]
    # a cell whose model learned, so that every figure depends on its training
    rows = rows[(rows["status"] == "ok") & (rows["id_val_acc"] > 0.9)]
    if rows.empty:
        pytest.skip(f"the published study has no cell computed on {here}")
    row = rows.sort_values("train_seconds").iloc[0]
    if row["data_fingerprint"] != real_workspace.bank.data_fingerprint:
        pytest.skip("OOD_BENCH_DATA holds other data than the study was run on")

    (task,) = plan_sweep(
        real_workspace,
        STANDARD,
        [(row["method"], [json.loads(row["params"])])],
        [row["variant"]],
        [int(row["class_size"])],
        [int(row["seed"])],
    ).tasks
    assert task.fingerprint == row["fingerprint"], "the splits changed"
    record = run_cell(task, real_workspace)

    assert record.status == "ok", record.error
    cell = f"{row['method']} {row['params']} {row['variant']} k={row['class_size']}"
    for figure in FIGURES:
        assert getattr(record, figure) == row[figure], f"{cell}: {figure}"


def test_the_published_page_is_what_the_leaderboard_command_writes(
    data_root, study_copy, tmp_path
):
    """leaderboards/standard/README.md and results.csv are the command's output
    for the stored results and NOTES.md, not hand edits that could drift."""
    from benchmark.cli import main

    study = STUDY.parent
    out = tmp_path / "board"
    argv = ["leaderboard", "--protocol", STANDARD.name, "--results", str(study_copy)]
    argv += ["--out", str(out), "--notes", str(study / "NOTES.md")]
    assert main([*argv, "--data-root", str(data_root)]) == 0
    for name in ("README.md", "results.csv"):
        assert (out / name).read_text() == (study / name).read_text(), name
