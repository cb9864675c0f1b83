"""Faults a sweep must survive: a killed runner, two runners on one file, broken
plugins, corrupt inputs. Each case runs `ood-bench run` as a real process on
real files and checks what was kept."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.store import SCHEMA_V1_DDL, ResultStore

TESTS = Path(__file__).resolve().parent
TIMEOUT_S = 300
SWEEP = [
    "--method",
    "baseline",
    "--protocol",
    "smoke",
    "--seeds",
    "0",
    "--device",
    "cpu",
]
METRICS = (
    "id_val_acc",
    "id_test_acc",
    "ood_test_acc",
    "conflict_test_acc",
    "train_loss",
)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- helpers


def cli_env(data_root: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child `ood-bench`: the test's data, cache and plugins."""
    env = dict(os.environ)
    env.pop("OOD_BENCH_RESULTS", None)
    env.pop("OOD_BENCH_PLUGINS", None)
    if data_root is not None:
        env["OOD_BENCH_DATA"] = str(data_root)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def command(results: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "benchmark", "run", *args, "--results", str(results)]


def run_cli(
    argv: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def start_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def query(path: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` on a results file, read through a connection of our own."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def cells(path: Path) -> dict[int, tuple]:
    """Every stored row by class size (one method, one seed), every column."""
    by_k: dict[int, tuple] = {}
    for row in query(path, "SELECT class_size, * FROM cells ORDER BY class_size"):
        assert row[0] not in by_k, f"class size {row[0]} stored twice"
        by_k[row[0]] = row[1:]
    return by_k


def count_stored(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return query(path, "SELECT count(*) FROM cells")[0][0]
    except sqlite3.OperationalError:  # created but not yet given its tables
        return 0


def count_claims(path: Path) -> int:
    try:
        return query(path, "SELECT count(*) FROM claims")[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def snapshot(*roots: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file under ``roots``."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[str(path)] = (digest, path.stat().st_mtime_ns)
    return found


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2 and exactly one line on stderr that holds every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ood-bench run: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def ran_count(stdout: str) -> int:
    found = re.search(r"^ran (\d+) cells", stdout, re.MULTILINE)
    assert found, stdout
    return int(found.group(1))


# ---------------------------------------------------------------- interruptions


def test_killed_runner_resumes_without_recomputing(data_root, tmp_path):
    results = tmp_path / "results.sqlite"
    sizes = [1, 2, 3, 4, 5, 6]
    # One cell at a time, so the kill lands inside a cell in a known order.
    argv = command(
        results, *SWEEP, "--class-sizes", ",".join(map(str, sizes)), "--jobs", "1", "-q"
    )
    runner = start_cli(argv, cli_env(data_root), tmp_path)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        # Kill while a cell is running: two stored and the next one claimed.
        while not (count_stored(results) >= 2 and count_claims(results) == 1):
            assert runner.poll() is None, runner.communicate()
            assert time.monotonic() < deadline, "no cell seen running in time"
            time.sleep(0.02)
        os.kill(runner.pid, signal.SIGKILL)
    finally:
        runner.kill()
        runner.communicate()
    assert runner.returncode == -signal.SIGKILL

    before = cells(results)
    assert 2 <= len(before) < len(sizes)
    assert sorted(before) == sizes[: len(before)]
    claims = query(results, "SELECT owner FROM claims")
    assert [owner.split(":")[1] for (owner,) in claims] == [str(runner.pid)]

    rerun = run_cli(argv, cli_env(data_root, OOD_BENCH_LOG="INFO"), tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the stale claim" in rerun.stderr

    after = cells(results)
    assert sorted(after) == sizes
    assert query(results, "SELECT count(*) FROM cells") == [(len(sizes),)]  # each once
    assert {k: after[k] for k in before} == before  # same rows, times included
    assert query(results, "SELECT DISTINCT status FROM cells") == [("ok",)]
    assert query(results, "SELECT count(*) FROM claims") == [(0,)]
    assert query(results, "PRAGMA integrity_check") == [("ok",)]


def test_two_runners_on_one_file_split_the_cells(data_root, tmp_path):
    results = tmp_path / "results.sqlite"
    argv = command(results, *SWEEP, "--class-sizes", "1,2,3,4")
    runners = [start_cli(argv, cli_env(data_root), tmp_path) for _ in range(2)]
    outputs = [runner.communicate(timeout=TIMEOUT_S) for runner in runners]

    for runner, (_, stderr) in zip(runners, outputs):
        assert runner.returncode == 0, stderr
    assert query(results, "PRAGMA integrity_check") == [("ok",)]
    stored = cells(results)
    assert sorted(stored) == [1, 2, 3, 4]
    assert query(results, "SELECT DISTINCT status FROM cells") == [("ok",)]
    ran = [ran_count(stdout) for stdout, _ in outputs]
    assert sum(ran) == 4 and min(ran) >= 1, ran
    assert query(results, "SELECT count(*) FROM claims") == [(0,)]


def test_the_same_cell_in_two_processes_gives_identical_figures(data_root, tmp_path):
    files = [tmp_path / f"run{i}.sqlite" for i in range(2)]
    runners = [
        start_cli(
            command(f, *SWEEP, "--class-sizes", "2", "-q"), cli_env(data_root), tmp_path
        )
        for f in files
    ]
    for runner in runners:
        _, stderr = runner.communicate(timeout=TIMEOUT_S)
        assert runner.returncode == 0, stderr

    select = f"SELECT status, {', '.join(METRICS)} FROM cells"
    first, second = (query(f, select) for f in files)
    assert first == second and len(first) == 1
    assert first[0][0] == "ok"


# ---------------------------------------------------------------- broken plugins


def test_broken_plugins_are_stored_and_shown_and_the_sweep_goes_on(data_root, tmp_path):
    results = tmp_path / "results.sqlite"
    methods = ["baseline", "fault_cell_build", "fault_train", "fault_nan"]
    argv = command(
        results,
        *[arg for name in methods for arg in ("--method", name)],
        *["--protocol", "smoke", "--class-sizes", "2", "--seeds", "0"],
        # In this process: the fault plugin counts the builds of one process.
        *["--device", "cpu", "--jobs", "1", "-q"],
    )
    env = cli_env(data_root, OOD_BENCH_PLUGINS="fault_plugins")
    first = run_cli(argv, env, tmp_path)
    assert first.returncode == 0, first.stderr

    rows = query(results, "SELECT method, status, error, id FROM cells ORDER BY method")
    outcome = {method: (status, error) for method, status, error, _ in rows}
    assert outcome == {
        "baseline": ("ok", None),
        "fault_cell_build": (
            "failed",
            "RuntimeError: out of some resource while building",
        ),
        "fault_nan": ("diverged", "training loss became nan after 10 steps"),
        "fault_train": ("failed", "RuntimeError: forward failed in training"),
    }

    board = subprocess.run(
        [sys.executable, "-m", "benchmark", "leaderboard", "--results", str(results)],
        env=cli_env(COLUMNS="200"),  # wide enough that no table cell wraps
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert board.returncode == 0, board.stderr
    assert "Failed and diverged cells" in board.stdout
    for method, (status, error) in outcome.items():
        if status != "ok":
            pattern = rf"│ {method} .*│ {status} +│ {re.escape(error)} +│"
            assert re.search(pattern, board.stdout), (method, board.stdout)

    # A rerun retries the failed cells and keeps the done ones (ok and diverged).
    second = run_cli(argv, env, tmp_path)
    assert second.returncode == 0, second.stderr
    ids_before = {method: row_id for method, _, _, row_id in rows}
    ids_after = dict(query(results, "SELECT method, id FROM cells"))
    kept = {m for m in ids_before if ids_after[m] == ids_before[m]}
    assert kept == {"baseline", "fault_nan"}
    assert len(ids_after) == 4


# ---------------------------------------------------------------- corrupt inputs


def write_image_folder(root: Path, n_train: int = 12, n_test: int = 2) -> Path:
    """A small CIFAR10/{train,test}/<class>/<image>.jpg tree of random images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            folder = root / "CIFAR10" / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)
    return root / "CIFAR10"


def empty_results(path: Path) -> Path:
    """A valid results file with no rows, as an earlier run leaves it."""
    with ResultStore(path):
        pass
    return path


def test_truncated_idx_file_fails_before_training(data_root, tmp_path):
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        kind = "idx3" if name.endswith("images") else "idx1"
        source = data_root / "MNIST" / "raw" / f"{name}-{kind}-ubyte"
        (raw / source.name).write_bytes(source.read_bytes())
    damaged = raw / "t10k-labels-idx1-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    (root / "cifar-10-batches-py").symlink_to(data_root / "cifar-10-batches-py")
    results = empty_results(tmp_path / "out" / "results.sqlite")
    before = snapshot(root, results.parent)

    result = run_cli(
        command(results, *SWEEP, "--data-root", str(root)), cli_env(), tmp_path
    )

    assert_one_line_error(result, str(damaged), "truncated")
    assert snapshot(root, results.parent) == before


def test_corrupt_jpeg_fails_before_training(data_root, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "MNIST").symlink_to(data_root / "MNIST")
    folder = write_image_folder(root)
    damaged = folder / "train" / "class1" / "005.jpg"
    damaged.write_bytes(damaged.read_bytes()[:200])
    results = empty_results(tmp_path / "out" / "results.sqlite")
    before = snapshot(root, results.parent)

    result = run_cli(
        command(results, *SWEEP, "--data-root", str(root)), cli_env(), tmp_path
    )

    assert_one_line_error(result, str(damaged))
    assert snapshot(root, results.parent) == before


def test_plugin_that_cannot_build_fails_before_training(data_root, tmp_path):
    results = empty_results(tmp_path / "out" / "results.sqlite")
    before = snapshot(results.parent)
    argv = command(results, *SWEEP, "--method", "fault_build", "--class-sizes", "2")
    env = cli_env(data_root, OOD_BENCH_PLUGINS="fault_plugins")

    result = run_cli(argv, env, tmp_path)

    assert_one_line_error(result, "'fault_build'", "cannot build this model")
    assert snapshot(results.parent) == before


def write_text(path: Path) -> None:
    path.write_text("method,ood\nbaseline,0.5\n")


def write_newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1_DDL + "PRAGMA user_version = 99;")
    conn.close()


@pytest.mark.parametrize(
    ("make", "needle"),
    [(write_text, "not an ood-bench results database"), (write_newer_schema, "newer")],
    ids=["not-a-database", "newer-schema"],
)
def test_unusable_results_file_is_refused_untouched(tmp_path, make, needle):
    results = tmp_path / "out" / "results.sqlite"
    results.parent.mkdir()
    make(results)
    before = snapshot(results.parent)

    # No data root at all: the results file must be refused before any data loads.
    argv = command(results, *SWEEP, "--data-root", str(tmp_path / "no-data"))
    result = run_cli(argv, cli_env(), tmp_path)

    assert_one_line_error(result, str(results), needle)
    assert snapshot(results.parent) == before
    assert not (tmp_path / "no-data").exists()


def test_results_path_that_cannot_be_written_is_refused(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder\n")
    before = snapshot(tmp_path)
    results = blocker / "results.sqlite"

    argv = command(results, *SWEEP, "--data-root", str(tmp_path / "no-data"))
    result = run_cli(argv, cli_env(), tmp_path)

    assert_one_line_error(result, str(blocker))
    assert snapshot(tmp_path) == before
