"""The results store against real SQLite files: round trips, claims, concurrency,
refusals that leave the file untouched, and migration from schema 1."""

from __future__ import annotations

import io
import math
import os
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, replace

import pandas as pd
import pytest

from benchmark.errors import StoreError
from benchmark.store import (
    _V2_NEW_COLUMNS,
    _V2_NEW_TABLES,
    SCHEMA_V1_DDL,
    SCHEMA_VERSION,
    CellRecord,
    ResultStore,
    canonical_params,
    new_owner,
    read_csv,
)


def make_record(**changes) -> CellRecord:
    record = CellRecord(
        protocol="smoke",
        protocol_version=1,
        fingerprint="fp-black-2-0",
        method="baseline",
        params=canonical_params({}),
        variant="black",
        class_size=2,
        seed=0,
        status="ok",
        error=None,
        id_val_acc=0.91,
        id_test_acc=0.9,
        ood_test_acc=0.55,
        conflict_test_acc=0.2,
        train_loss=0.31,
        num_params=61706,
        train_seconds=1.5,
        wall_seconds=2.25,
        images_per_second=640.0,
        device="cpu",
        package_version="0.1.0",
        git_commit=None,
        torch_version="2.4.0",
        method_source="ood-bench 0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:00:02+00:00",
        executor="local",
        data_fingerprint="data-1",
    )
    return replace(record, **changes)


def records_of(df: pd.DataFrame) -> list[CellRecord]:
    def plain(value):
        if (
            value is None
            or value is pd.NA
            or (isinstance(value, float) and math.isnan(value))
        ):
            return None
        return value.item() if hasattr(value, "item") else value

    return [
        CellRecord(**{k: plain(v) for k, v in row.items()})
        for row in df.to_dict("records")
    ]


SAMPLE = [
    make_record(),
    make_record(fingerprint="fp-black-8-0", class_size=8, git_commit="abc123"),
    make_record(
        method="masker",
        params=canonical_params({"c": 0.5}),
        status="failed",
        error="RuntimeError: out of memory\nTraceback ...",
        id_val_acc=None,
        id_test_acc=None,
        ood_test_acc=None,
        conflict_test_acc=None,
        train_loss=None,
        num_params=None,
        images_per_second=None,
        data_fingerprint=None,
    ),
]


def test_canonical_params_is_key_order_free():
    assert canonical_params({"b": 1, "a": 0.5}) == '{"a":0.5,"b":1}'
    assert canonical_params({}) == "{}"


def test_round_trip_through_frame_and_csv(tmp_path):
    path = tmp_path / "deep" / "dir" / "results.sqlite"
    with ResultStore(path) as store:
        for record in SAMPLE:
            assert store.put(record)
        df = store.frame()
        buf = io.StringIO()
        store.to_csv(buf)
        assert list(store.frame("smoke")["method"]) == [
            "baseline",
            "baseline",
            "masker",
        ]
        assert store.frame("quick").empty

    assert records_of(df) == SAMPLE
    assert list(df.columns) == list(asdict(SAMPLE[0]))
    buf.seek(0)
    assert records_of(read_csv(buf)) == SAMPLE

    with ResultStore(path) as reopened:  # it persists
        assert records_of(reopened.frame()) == SAMPLE


def test_duplicate_key_is_not_duplicated_and_first_done_result_wins(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.put(make_record(ood_test_acc=0.5))
        assert not store.put(make_record(ood_test_acc=0.7))
        df = store.frame()
        assert len(df) == 1 and df["ood_test_acc"].iloc[0] == 0.5

        # A deliberate rerun overwrites.
        assert store.put(make_record(ood_test_acc=0.7), replace=True)
        df = store.frame()
        assert len(df) == 1 and df["ood_test_acc"].iloc[0] == 0.7


def test_failed_row_is_replaced_and_done_keys_skip_it(tmp_path):
    failed = make_record(status="failed", error="boom", ood_test_acc=None)
    diverged = make_record(fingerprint="fp-2", status="diverged", error="loss is nan")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(failed)
        store.put(diverged)
        assert store.done_keys() == {diverged.key}

        assert store.put(make_record(status="failed", error="boom again"))
        assert store.frame()["error"].tolist() == ["loss is nan", "boom again"]
        assert store.put(make_record())
        assert store.done_keys() == {failed.key, diverged.key}
        df = store.frame()
        assert len(df) == 2
        assert df.set_index("fingerprint").loc["fp-black-2-0", "status"] == "ok"

        # An ok row is not overwritten by a later failure of another runner.
        assert not store.put(failed)
        assert (
            store.frame().set_index("fingerprint").loc["fp-black-2-0", "status"] == "ok"
        )


def test_claims_split_work_between_two_stores_on_one_file(tmp_path):
    path = tmp_path / "r.sqlite"
    key = make_record().key
    first_owner, second_owner = new_owner(), new_owner()
    with ResultStore(path) as first, ResultStore(path) as second:
        assert first.claim(key, first_owner)
        assert first.claim(key, first_owner)  # holding it twice is fine
        assert not second.claim(key, second_owner)

        second.release(key, second_owner)  # not the holder: changes nothing
        assert not second.claim(key, second_owner)

        first.release(key, first_owner)
        assert second.claim(key, second_owner)
        assert not first.claim(key, first_owner)


def test_claim_of_a_dead_process_is_taken_over(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert finished.returncode == 0
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead_owner = f"{socket.gethostname()}:{proc.pid}:deadbeef"
    key = make_record().key
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.claim(key, dead_owner)
        assert store.claim(key, new_owner())


def test_claim_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    # Our own pid stands for a pid that was reused after the claiming runner died:
    # alive, but with another start time than the one recorded in the claim.
    host, pid = socket.gethostname(), os.getpid()
    key = make_record().key
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.claim(key, new_owner())
        # a live owner holds it, whatever another claimant says of that pid
        assert not store.claim(key, f"{host}:{pid}:other:{'0' * 32}")
    with ResultStore(tmp_path / "s.sqlite") as store:
        assert store.claim(key, f"{host}:{pid}:deadbeef-1:{'0' * 32}")
        assert store.claim(key, new_owner())


def test_claim_older_than_the_timeout_is_taken_over(tmp_path):
    key = make_record().key
    # Same host, live pid (ours), so only the age can free it.
    with ResultStore(tmp_path / "r.sqlite", claim_timeout_s=0.01) as store:
        assert store.claim(key, new_owner())
        time.sleep(0.05)
        assert store.claim(key, new_owner())


WRITER = """
import os
import sys
import time
from dataclasses import replace
sys.path.insert(0, {tests!r})
from test_store import make_record
from benchmark.store import ResultStore

path, name, ready, go = sys.argv[1:5]
with ResultStore(path) as store:
    open(ready, "w").close()
    while not os.path.exists(go):  # start writing together, after the slow imports
        time.sleep(0.005)
    for i in range(50):
        assert store.put(make_record(fingerprint=f"{{name}}-{{i}}", method=name))
"""


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared.sqlite"
    ResultStore(path).close()
    go = tmp_path / "go"
    script = WRITER.format(tests=str(__import__("pathlib").Path(__file__).parent))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                str(path),
                name,
                str(tmp_path / name),
                str(go),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / n).exists() for n in ("alpha", "beta")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with ResultStore(path) as store:
        df = store.frame()
    assert len(df) == 100
    assert df.groupby("method").size().to_dict() == {"alpha": 50, "beta": 50}


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"these are my notes, not a database\n" * 40)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="is not an ood-bench results database"):
        ResultStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.sqlite"]


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "future.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1_DDL)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError) as info:
        ResultStore(path)
    message = str(info.value)
    assert f"schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}" in message
    assert "upgrade ood-bench" in message and "\n" not in message
    assert path.read_bytes() == before


def test_an_sqlite_file_of_another_program_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="without ood-bench results tables"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_a_path_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the results directory"):
        ResultStore(blocker / "results.sqlite")
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)


def test_a_missing_file_is_refused_when_not_creating(tmp_path):
    path = tmp_path / "nothing.sqlite"
    with pytest.raises(StoreError, match="no results file"):
        ResultStore(path, create=False)
    assert not path.exists()


def test_schema_1_file_is_migrated_in_place_without_loss(tmp_path):
    path = tmp_path / "old.sqlite"
    old = [make_record(), make_record(fingerprint="fp-2", status="failed", error="x")]
    v1_columns = [
        c
        for c in asdict(old[0])
        if c not in ("executor", "data_fingerprint", "metrics")
    ]
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1_DDL)
    for record in old:
        values = [asdict(record)[c] for c in v1_columns]
        conn.execute(
            f"INSERT INTO cells ({', '.join(v1_columns)}) "
            f"VALUES ({', '.join('?' for _ in v1_columns)})",
            values,
        )
    conn.commit()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    conn.close()

    with ResultStore(path) as store:
        migrated = records_of(store.frame())
        assert store.claim(old[0].key, new_owner())
        assert store.done_keys() == {old[0].key}
    expected = [replace(r, executor="local", data_fingerprint=None) for r in old]
    assert migrated == expected

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    with ResultStore(path) as again:  # opening a current file changes nothing
        assert records_of(again.frame()) == expected


def test_schema_2_file_gains_an_empty_metrics_column(tmp_path):
    path = tmp_path / "v2.sqlite"
    old = make_record(executor="ray", data_fingerprint="d" * 16)
    v2_columns = [c for c in asdict(old) if c != "metrics"]
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V1_DDL)
    for statement in _V2_NEW_COLUMNS:
        conn.execute(statement)
    conn.executescript(_V2_NEW_TABLES + "PRAGMA user_version = 2;")
    conn.execute(
        f"INSERT INTO cells ({', '.join(v2_columns)}) "
        f"VALUES ({', '.join('?' for _ in v2_columns)})",
        [asdict(old)[c] for c in v2_columns],
    )
    conn.commit()
    conn.close()

    with ResultStore(path) as store:
        assert records_of(store.frame()) == [old]
        measured = make_record(fingerprint="fp-3", metrics='{"x":0.5}')
        store.put(measured)
        assert records_of(store.frame())[1].metric_values == {"x": 0.5}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    events = dict(conn.execute("SELECT key, value FROM meta"))
    assert "migrated_from_2_at" in events
    conn.close()
