"""The results store: one SQLite file holding a row per finished cell.

A cell is one (method configuration, variant, class size, seed) under a
protocol; its row is keyed by (fingerprint, method, params), so a result is
only ever reused for exactly the same splits and configuration. Several
runners may share one file: writes are short ``BEGIN IMMEDIATE`` transactions
in WAL mode, and the ``claims`` table lets runners split the remaining cells
instead of computing the same one twice. The file's ``PRAGMA user_version`` is
its schema version; older files are migrated in place when opened.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from benchmark.errors import StoreError

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
STATUSES = ("ok", "failed", "diverged")
DONE_STATUSES = ("ok", "diverged")  # failed cells are retried by the next run

# Long enough for the slowest cell of the standard protocol on a laptop CPU;
# a claim older than this is assumed abandoned even if its owner looks alive.
DEFAULT_CLAIM_TIMEOUT_S = 12 * 3600.0
BUSY_TIMEOUT_S = 60.0

_SQLITE_MAGIC = b"SQLite format 3\x00"

# Schema version 1, kept verbatim so that files written by it can be recognised
# and migrated (and so tests can write one). It had no claims table.
SCHEMA_V1_DDL = """
CREATE TABLE cells (
    id INTEGER PRIMARY KEY,
    protocol TEXT NOT NULL,
    protocol_version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    variant TEXT NOT NULL,
    class_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    id_val_acc REAL,
    id_test_acc REAL,
    ood_test_acc REAL,
    conflict_test_acc REAL,
    train_loss REAL,
    num_params INTEGER,
    train_seconds REAL,
    wall_seconds REAL,
    images_per_second REAL,
    device TEXT NOT NULL,
    package_version TEXT NOT NULL,
    git_commit TEXT,
    torch_version TEXT NOT NULL,
    method_source TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    UNIQUE (fingerprint, method, params)
);
PRAGMA user_version = 1;
"""

# Version 2 adds two columns at the end of `cells` (so a migrated table and a
# new one have the same column order), the claims table and the meta table.
# Rows from version 1 were all computed in-process, hence executor 'local'.
_V2_NEW_COLUMNS = (
    "ALTER TABLE cells ADD COLUMN executor TEXT NOT NULL DEFAULT 'local'",
    "ALTER TABLE cells ADD COLUMN data_fingerprint TEXT",
)
_V2_NEW_TABLES = """
CREATE TABLE IF NOT EXISTS claims (
    fingerprint TEXT NOT NULL,
    method TEXT NOT NULL,
    params TEXT NOT NULL,
    owner TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (fingerprint, method, params)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 3 adds `metrics`: a JSON object of further per-cell measurements
# (mask precision, for models that have a mask), NULL where there are none.
_V3_NEW_COLUMNS = ("ALTER TABLE cells ADD COLUMN metrics TEXT",)


def canonical_params(params: dict) -> str:
    """The one JSON spelling of a method's parameters used in keys and tables."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string, the format of started_at/finished_at."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_owner() -> str:
    """A claim owner id for this process: ``hostname:pid:identity:uuid``.

    The identity (boot id and process start time, on Linux) tells a live runner
    from an unrelated process that later got the same pid, after a restart say.
    """
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_identity(pid) or '-'}:{uuid.uuid4().hex}"


def _process_identity(pid: int) -> str | None:
    """The boot id and start time of process ``pid``, or None where /proc lacks them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may hold spaces; fields after its ')' are plain.
    start_time = stat.rpartition(")")[2].split()[19]
    return f"{boot}-{start_time}"


def default_results_path() -> Path:
    """Where results go unless ``--results`` says otherwise.

    ``$OOD_BENCH_RESULTS`` if set, else ``results/ood-bench.sqlite`` under the
    current directory, so a checkout keeps its results next to its published
    leaderboards and two checkouts never share a file by accident.
    """
    env = os.environ.get("OOD_BENCH_RESULTS")
    return Path(env) if env else Path("results") / "ood-bench.sqlite"


@dataclass
class CellRecord:
    """One finished cell: its identity, its figures and how it was produced."""

    protocol: str
    protocol_version: int
    fingerprint: str
    method: str
    params: str  # canonical_params() of the method configuration
    variant: str
    class_size: int
    seed: int
    status: str  # "ok", "failed" or "diverged"
    error: str | None
    id_val_acc: float | None
    id_test_acc: float | None
    ood_test_acc: float | None
    conflict_test_acc: float | None
    train_loss: float | None
    num_params: int | None
    train_seconds: float | None
    wall_seconds: float | None
    images_per_second: float | None
    device: str
    package_version: str
    git_commit: str | None
    torch_version: str
    method_source: str  # distribution and version of the plugin
    started_at: str
    finished_at: str
    executor: str = "local"
    data_fingerprint: str | None = None
    metrics: str | None = None  # JSON object of further measurements, or None

    @property
    def metric_values(self) -> dict:
        """The further measurements as a dict (empty when there are none)."""
        return json.loads(self.metrics) if self.metrics else {}

    @property
    def key(self) -> tuple[str, str, str]:
        """(fingerprint, method, params): what makes two results the same cell."""
        return (self.fingerprint, self.method, self.params)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(CellRecord))
_STRING_COLUMNS = tuple(
    f.name for f in fields(CellRecord) if f.type in ("str", "str | None")
)
_INT_COLUMNS = ("protocol_version", "class_size", "seed", "num_params")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner_is_dead(owner: str) -> bool:
    """True when the owner ran on this host and its process is gone, or its pid
    now belongs to another process."""
    parts = owner.split(":")
    host, pid_text = parts[0], parts[1] if len(parts) > 1 else ""
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # cannot tell from here; only the timeout frees it
    pid = int(pid_text)
    if not _pid_alive(pid):
        return True
    recorded = parts[2] if len(parts) >= 4 else "-"
    current = _process_identity(pid)
    return recorded != "-" and current is not None and current != recorded


class ResultStore:
    """An open results file; use as a context manager or call ``close()``."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        create: bool = True,
        claim_timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.claim_timeout_s = claim_timeout_s
        self._check_file(create)
        self._conn = self._connect()
        try:
            self._prepare_schema()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -----------------------------------------------------------

    def _check_file(self, create: bool) -> None:
        """Refuse a path we cannot use, before SQLite touches it."""
        path = self.path
        if path.is_dir():
            raise StoreError(f"{path} is a directory; pass a file path as --results")
        if not path.exists():
            if not create:
                raise StoreError(
                    f"no results file at {path}; run `ood-bench run` first "
                    f"or pass --results PATH"
                )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the results directory {path.parent} "
                    f"({exc.strerror or exc}); pass another --results path"
                ) from None
        else:
            with path.open("rb") as f:
                header = f.read(len(_SQLITE_MAGIC))
            if header and header != _SQLITE_MAGIC:
                raise StoreError(
                    f"{path} is not an ood-bench results database; "
                    f"pass another --results path"
                )
            if not os.access(path, os.W_OK):
                raise StoreError(
                    f"{path} is not writable; fix its permissions or pass "
                    f"another --results path"
                )
        # WAL mode keeps two files next to the database, so the folder must be writable.
        if not os.access(path.parent, os.W_OK):
            raise StoreError(
                f"cannot write in {path.parent}; fix its permissions or pass "
                f"another --results path"
            )

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: transactions are spelled out with BEGIN IMMEDIATE.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open {self.path} ({exc}); pass another --results path"
            ) from None
        return conn

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {name for (name,) in rows}

    def _prepare_schema(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            tables = self._tables()
        except sqlite3.DatabaseError:
            raise StoreError(
                f"{self.path} is not an ood-bench results database; "
                f"pass another --results path"
            ) from None

        # Every check that can refuse the file runs before anything is written.
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer ood-bench (schema {version} > "
                f"{SCHEMA_VERSION}); upgrade ood-bench or use another --results path"
            )
        if tables and "cells" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database without ood-bench results "
                f"tables; pass another --results path"
            )
        if tables and version == 0:
            raise StoreError(
                f"{self.path} has a cells table but no ood-bench schema version; "
                f"pass another --results path"
            )

        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            if version < SCHEMA_VERSION:
                self._create_or_migrate()
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot write {self.path} ({exc}); check its permissions or "
                f"pass another --results path"
            ) from None
        self._check_columns()

    def _create_or_migrate(self) -> None:
        with self._immediate():
            # Another process may have done it while we waited for the lock.
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            event = f"migrated_from_{version}_at"
            if version == 0:
                for statement in _split_sql(SCHEMA_V1_DDL):
                    self._conn.execute(statement)
                version, event = 1, "created_at"
            else:
                log.info("migrating %s from schema %d", self.path, version)
            if version == 1:
                for statement in _V2_NEW_COLUMNS:
                    self._conn.execute(statement)
                for statement in _split_sql(_V2_NEW_TABLES):
                    self._conn.execute(statement)
                version = 2
            if version == 2:
                for statement in _V3_NEW_COLUMNS:
                    self._conn.execute(statement)
            self._conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (event, utc_now()),
            )
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_columns(self) -> None:
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(cells)")}
        missing = [c for c in COLUMNS if c not in present]
        if missing or "claims" not in self._tables():
            raise StoreError(
                f"{self.path} lacks ood-bench columns or tables "
                f"({', '.join(missing) or 'claims'}); pass another --results path"
            )

    def _immediate(self) -> _Transaction:
        return _Transaction(self._conn)

    # -- reading and writing -----------------------------------------------

    def done_keys(self) -> set[tuple[str, str, str]]:
        """Keys of cells that need no more work: status ok or diverged."""
        rows = self._conn.execute(
            "SELECT fingerprint, method, params FROM cells WHERE status IN (?, ?)",
            DONE_STATUSES,
        )
        return {tuple(row) for row in rows}

    def put(self, record: CellRecord, replace: bool = False) -> bool:
        """Store a finished cell; False when a done row for its key was kept instead.

        A failed row is replaced by any later result of the same cell. A done
        row (ok or diverged) is kept, since another runner finished that cell
        first, unless ``replace`` asks for a deliberate rerun to overwrite it.
        """
        if record.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {record.status!r}")
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._immediate():
            row = self._conn.execute(
                "SELECT status FROM cells WHERE fingerprint=? AND method=? AND params=?",
                record.key,
            ).fetchone()
            if not replace and row is not None and row[0] in DONE_STATUSES:
                log.info("kept the existing %s result of %s", row[0], record.key)
                return False
            self._conn.execute(
                f"INSERT OR REPLACE INTO cells ({', '.join(COLUMNS)}) "
                f"VALUES ({placeholders})",
                astuple(record),
            )
        return True

    def claim(self, key: tuple[str, str, str], owner: str) -> bool:
        """Reserve a cell for ``owner``; False while another live owner holds it.

        A claim is only a lock: it does not look at stored results, so callers
        skip ``done_keys()`` first, and a deliberate rerun can claim a done cell.
        """
        now = time.time()
        with self._immediate():
            held = self._conn.execute(
                "SELECT owner, claimed_at FROM claims "
                "WHERE fingerprint=? AND method=? AND params=?",
                key,
            ).fetchone()
            if held is not None:
                holder, claimed_at = held
                stale = now - claimed_at > self.claim_timeout_s or _owner_is_dead(
                    holder
                )
                if holder != owner and not stale:
                    return False
                if holder != owner:
                    log.info("taking over the stale claim of %s on %s", holder, key)
            self._conn.execute(
                "INSERT OR REPLACE INTO claims "
                "(fingerprint, method, params, owner, claimed_at) VALUES (?, ?, ?, ?, ?)",
                (*key, owner, now),
            )
        return True

    def release(self, key: tuple[str, str, str], owner: str) -> None:
        """Give up ``owner``'s claim on a cell; a claim held by someone else stays."""
        with self._immediate():
            self._conn.execute(
                "DELETE FROM claims "
                "WHERE fingerprint=? AND method=? AND params=? AND owner=?",
                (*key, owner),
            )

    def frame(self, protocol: str | None = None) -> pd.DataFrame:
        """Every stored row (of protocol ``protocol`` if given), one column per field."""
        query = f"SELECT {', '.join(COLUMNS)} FROM cells"
        args: tuple = ()
        if protocol is not None:
            query += " WHERE protocol = ?"
            args = (protocol,)
        rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return _typed(pd.DataFrame(rows, columns=list(COLUMNS)))

    def to_csv(self, path_or_buf, protocol: str | None = None) -> None:
        """Write the rows of ``frame(protocol)`` as CSV, with a header line."""
        self.frame(protocol).to_csv(path_or_buf, index=False)

    def close(self) -> None:
        """Close the connection; the file stays as it is."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_csv(path_or_buf) -> pd.DataFrame:
    """Read a CSV written by ``ResultStore.to_csv`` back with the store's column types."""
    df = pd.read_csv(
        path_or_buf,
        dtype={c: "object" for c in _STRING_COLUMNS},
        keep_default_na=False,
        na_values=[""],
    )
    return _typed(df)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Give a results frame the same dtypes whichever way it was loaded."""
    df = df.reindex(columns=list(COLUMNS))
    for column in COLUMNS:
        if column in _INT_COLUMNS:
            df[column] = pd.to_numeric(df[column]).astype("Int64")
        elif column in _STRING_COLUMNS:
            df[column] = df[column].astype("object").where(df[column].notna(), None)
        else:
            df[column] = pd.to_numeric(df[column]).astype("float64")
    return df


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back if the block raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
