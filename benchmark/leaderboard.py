"""Leaderboards: stored cells turned into ranked tables, tests and figures.

How the numbers are made:

- Only rows of the current protocol version are used. Rows of another
  version, of cells the protocol does not have, with a split fingerprint that
  differs from the expected one, or superseded by a newer result of the same
  cell are left out and reported as stale.
- Accuracies are means over the cells that finished with status ok; failed
  and diverged cells are listed separately, and the Seeds column says how
  many seeds finished at every class size (``2/3``).
- OOD @c is the mean ± standard deviation over seeds at class size c. Mean
  OOD, ID and Conflict are means over class sizes of those per-class-size
  means, so every class size weighs the same; they are left empty, and the
  row unranked, until every class size has at least one finished seed.
- Significance against the baseline is paired by cell: a configuration and
  the baseline are paired on cells with the same variant, class size, seed
  and fingerprint, so both saw identical splits. The table gives the mean of
  the paired OOD differences in percentage points with its 95% t confidence
  interval, and ``*`` when a two-sided paired t-test (``scipy.stats.ttest_rel``)
  gives p < 0.05, with no correction for the number of configurations.
  Cells of one seed share their background pools (smaller pools are prefixes
  of larger ones), so the pairs are not fully independent; read ``*`` as
  "consistently better or worse across cells", not as an exact error rate.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from benchmark.compose import VARIANTS
from benchmark.errors import BenchmarkError
from benchmark.protocol import Protocol, get_protocol

log = logging.getLogger(__name__)

ALPHA = 0.05
NO_VALUE = "—"
_CELL = ["variant", "class_size", "seed"]
_CONFIG = ["method", "params"]


@dataclass(frozen=True)
class StaleGroup:
    """Rows of one method left out of the leaderboard for one reason."""

    method: str
    protocol: str  # the protocol key the rows were stored under, e.g. "standard@v1"
    reason: str
    rows: int


@dataclass
class Leaderboard:
    """Ranked tables per variant, plus what was left out and what failed."""

    protocol: Protocol
    baseline: str
    tables: dict[str, pd.DataFrame]  # variant -> one ranked row per configuration
    stale: list[StaleGroup] = field(default_factory=list)
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # current rows, any status
    selected: tuple[int, ...] | None = None  # class sizes ranked on; None: all

    @property
    def class_sizes(self) -> tuple[int, ...]:
        """The class sizes the tables show and average over."""
        return self.selected or self.protocol.class_sizes

    def configurations(self) -> list[tuple[str, str]]:
        """Every (method, params) on the leaderboard in reading order: the
        baseline first, then by method and by parameter values."""
        found = self.rows[_CONFIG].drop_duplicates().itertuples(index=False)
        return sorted(
            (tuple(c) for c in found),
            key=lambda c: (c[0] != self.baseline, c[0], _params_key(c[1])),
        )

    def colours(self) -> dict[tuple[str, str], str]:
        """One colour per configuration drawn as a curve (two class sizes or
        more), the same in every figure and for every variant."""
        import matplotlib

        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        ok = self.rows[self.rows["status"] == "ok"]
        sizes = ok.groupby(_CONFIG)["class_size"].nunique()
        curves = [c for c in self.configurations() if sizes.get(c, 0) >= 2]
        return {c: cycle[i % len(cycle)] for i, c in enumerate(curves)}


def _params_key(params: str) -> tuple:
    """Sort key for a configuration's parameters: numbers by value, then text."""
    try:
        values = json.loads(params)
    except (TypeError, ValueError):
        return ((1, str(params)),)
    if not isinstance(values, dict):
        return ((1, str(params)),)
    return tuple(
        (0, v) if isinstance(v, (int, float)) else (1, str(v)) for v in values.values()
    )


def aggregate(
    df: pd.DataFrame,
    protocol: Protocol | None = None,
    baseline: str = "baseline",
    expected_fingerprints: dict[tuple[str, int, int], str] | None = None,
    class_sizes: list[int] | tuple[int, ...] | None = None,
) -> Leaderboard:
    """Rank the configurations in a results frame (as from ``ResultStore.frame``).

    ``protocol`` defaults to the one protocol the rows belong to;
    ``expected_fingerprints`` maps (variant, class size, seed) to the current
    split fingerprint, and rows that disagree are reported as stale.
    ``class_sizes`` ranks on those class sizes of the protocol only, so that
    configurations run at some class sizes can be ranked on what they share.
    """
    protocol, df = _select_protocol(df, protocol)
    selected = _select_class_sizes(protocol, class_sizes)
    df = df.reset_index(drop=True)  # row labels are used to align the stale reasons
    reasons = _stale_reasons(df, protocol, expected_fingerprints)
    stale = _stale_groups(df, reasons)
    current = df[reasons == ""]
    if selected is not None:
        current = current[current["class_size"].isin(selected)]
    current = current.copy()

    failures = _failures(current)
    tables = {}
    sizes = selected or protocol.class_sizes
    for variant in protocol.variants:
        rows = current[current["variant"] == variant]
        if not rows.empty:
            tables[variant] = _variant_table(rows, protocol, sizes, baseline)
    return Leaderboard(
        protocol=protocol,
        baseline=baseline,
        tables=tables,
        stale=stale,
        failures=failures,
        rows=current.reset_index(drop=True),
        selected=selected,
    )


def _select_class_sizes(
    protocol: Protocol, class_sizes: list[int] | tuple[int, ...] | None
) -> tuple[int, ...] | None:
    """The chosen class sizes in the protocol's order, or None for all of them."""
    if not class_sizes:
        return None
    unknown = sorted(set(class_sizes) - set(protocol.class_sizes))
    if unknown:
        raise BenchmarkError(
            f"class size {unknown[0]} is not in {protocol.key} "
            f"(its class sizes: {', '.join(map(str, protocol.class_sizes))})"
        )
    chosen = tuple(c for c in protocol.class_sizes if c in set(class_sizes))
    return None if chosen == protocol.class_sizes else chosen


def _select_protocol(
    df: pd.DataFrame, protocol: Protocol | None
) -> tuple[Protocol, pd.DataFrame]:
    if protocol is not None:
        return protocol, df[df["protocol"] == protocol.name]
    names = sorted(df["protocol"].dropna().unique())
    if not names:
        raise BenchmarkError("there are no results to rank; run `ood-bench run` first")
    if len(names) > 1:
        raise BenchmarkError(
            f"the results hold several protocols ({', '.join(names)}); "
            f"pass --protocol NAME to choose one"
        )
    return get_protocol(names[0]), df


def _stale_reasons(
    df: pd.DataFrame,
    protocol: Protocol,
    expected_fingerprints: dict[tuple[str, int, int], str] | None,
) -> pd.Series:
    """Why each row is left out, or '' for rows that belong on the leaderboard."""
    reasons = pd.Series("", index=df.index, dtype="object")

    def mark(mask, reason: str) -> None:
        reasons[mask & (reasons == "")] = reason

    versions = df["protocol_version"].astype("int64")
    mark(
        versions != protocol.version,
        f"stored under another version of the protocol (current: {protocol.key})",
    )
    in_protocol = (
        df["variant"].isin(protocol.variants)
        & df["class_size"].isin(protocol.class_sizes)
        & df["seed"].isin(protocol.seeds)
    )
    mark(~in_protocol, f"not a cell of {protocol.key}")
    if expected_fingerprints is not None:
        expected = [
            expected_fingerprints.get((v, int(c), int(s)))
            for v, c, s in zip(df["variant"], df["class_size"], df["seed"])
        ]
        differs = [
            e is not None and e != f for e, f in zip(expected, df["fingerprint"])
        ]
        mark(
            pd.Series(differs, index=df.index, dtype=bool),
            "split fingerprint differs from the current splits",
        )

    # One result per cell and configuration: a done row beats a failed one,
    # then the most recently finished wins.
    candidates = df[reasons == ""].assign(
        _done=lambda d: d["status"].isin(["ok", "diverged"])
    )
    ordered = candidates.sort_values(["_done", "finished_at"], ascending=False)
    superseded = ordered.duplicated(subset=_CONFIG + _CELL, keep="first")
    reasons[superseded[superseded].index] = (
        "superseded by a newer result of the same cell"
    )
    return reasons


def _stale_groups(df: pd.DataFrame, reasons: pd.Series) -> list[StaleGroup]:
    stale = df[reasons != ""].assign(reason=reasons[reasons != ""])
    if stale.empty:
        return []
    keys = stale["protocol"] + "@v" + stale["protocol_version"].astype(str)
    counts = stale.assign(key=keys).groupby(["method", "key", "reason"]).size()
    groups = [StaleGroup(m, k, r, int(n)) for (m, k, r), n in counts.items()]
    for g in groups:
        log.info("left out %d stale rows of %s: %s", g.rows, g.method, g.reason)
    return groups


def _failures(current: pd.DataFrame) -> pd.DataFrame:
    failed = current[current["status"] != "ok"]
    columns = _CONFIG + _CELL + ["status", "error"]
    out = failed[columns].copy()
    out["error"] = [
        (e.strip().splitlines() or [""])[0] if isinstance(e, str) else ""
        for e in out["error"]
    ]
    return out.sort_values(_CONFIG + _CELL).reset_index(drop=True)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), std


def _variant_table(
    rows: pd.DataFrame,
    protocol: Protocol,
    class_sizes: tuple[int, ...],
    baseline: str,
) -> pd.DataFrame:
    ok = rows[rows["status"] == "ok"]
    base_params = _baseline_params(ok, baseline)
    base_rows = (
        ok[(ok["method"] == baseline) & (ok["params"] == base_params)]
        if base_params is not None
        else ok.iloc[0:0]
    )

    records = []
    configs = rows[_CONFIG].drop_duplicates().itertuples(index=False)
    for method, params in configs:
        mine = ok[(ok["method"] == method) & (ok["params"] == params)]
        record = {"method": method, "params": params}
        record.update(_accuracies(mine, class_sizes))
        record["seeds_done"] = _complete_seeds(mine, class_sizes)
        record["seeds_expected"] = len(protocol.seeds)
        num_params = mine["num_params"].dropna()
        record["num_params"] = int(num_params.max()) if len(num_params) else pd.NA
        record["train_seconds"] = float(mine["train_seconds"].astype(float).mean())
        record["is_baseline"] = method == baseline and params == base_params
        record.update(_paired_difference(mine, base_rows, record["is_baseline"]))
        records.append(record)

    table = pd.DataFrame.from_records(records)
    # Unranked rows follow in reading order: by method, then parameter values.
    keys = [
        (m != baseline, m, _params_key(p)) for m, p in zip(table.method, table.params)
    ]
    reading = sorted(range(len(keys)), key=keys.__getitem__)
    table["_order"] = pd.Series(range(len(reading)), index=reading)
    table = table.sort_values(
        ["ood_mean", "_order"],
        ascending=[False, True],
        na_position="last",
        kind="stable",
    ).reset_index(drop=True)
    ranked = table["ood_mean"].notna()
    rank = pd.Series(pd.NA, index=table.index, dtype="Int64")
    rank[ranked] = np.arange(1, int(ranked.sum()) + 1)
    table.insert(0, "rank", rank)
    return table.drop(columns="_order")


def _baseline_params(ok: pd.DataFrame, baseline: str) -> str | None:
    """The baseline configuration: the one with most finished cells, defaults first."""
    mine = ok[ok["method"] == baseline]
    if mine.empty:
        return None
    counts = mine.groupby("params").size().reset_index(name="n")
    counts = counts.sort_values(["n", "params"], ascending=[False, True])
    return counts["params"].iloc[0]


def _accuracies(ok: pd.DataFrame, class_sizes: tuple[int, ...]) -> dict:
    out: dict = {}
    per_size = {"ood": [], "id": [], "conflict": []}
    columns = {
        "ood": "ood_test_acc",
        "id": "id_test_acc",
        "conflict": "conflict_test_acc",
    }
    for c in class_sizes:
        at_c = ok[ok["class_size"] == c]
        for name, column in columns.items():
            mean, std = _mean_std(at_c[column])
            per_size[name].append(mean)
            if name != "conflict":
                out[f"{name}_{c}"] = mean
                out[f"{name}_{c}_std"] = std
    for name, means in per_size.items():
        complete = not any(math.isnan(m) for m in means)
        out[f"{name}_mean"] = float(np.mean(means)) if complete else math.nan
    out["gap"] = out["id_mean"] - out["ood_mean"]
    return out


def _complete_seeds(ok: pd.DataFrame, class_sizes: tuple[int, ...]) -> int:
    """Seeds that finished at every one of the class sizes."""
    sizes = ok[ok["class_size"].isin(class_sizes)].groupby("seed")["class_size"]
    return int((sizes.nunique() == len(class_sizes)).sum())


def _paired_difference(
    mine: pd.DataFrame, base: pd.DataFrame, is_baseline: bool
) -> dict:
    """Mean paired OOD difference from the baseline, its 95% CI and p-value."""
    out = {
        "n_pairs": 0,
        "diff_mean": math.nan,
        "diff_low": math.nan,
        "diff_high": math.nan,
        "p_value": math.nan,
        "significant": False,
    }
    if is_baseline or base.empty:
        return out
    on = ["class_size", "seed", "fingerprint"]
    pairs = mine[on + ["ood_test_acc"]].merge(
        base[on + ["ood_test_acc"]], on=on, suffixes=("", "_base")
    )
    pairs = pairs.dropna(subset=["ood_test_acc", "ood_test_acc_base"])
    n = len(pairs)
    out["n_pairs"] = n
    if n < 2:
        return out

    a = pairs["ood_test_acc"].to_numpy(float)
    b = pairs["ood_test_acc_base"].to_numpy(float)
    diff = a - b
    out["diff_mean"] = float(diff.mean())
    if np.allclose(diff, diff[0]):
        # No spread at all: the t statistic is undefined, the difference is exact.
        out["diff_low"] = out["diff_high"] = float(diff[0])
        out["p_value"] = 1.0 if diff[0] == 0 else 0.0
    else:
        result = stats.ttest_rel(a, b)
        low, high = result.confidence_interval(confidence_level=1 - ALPHA)
        out["diff_low"], out["diff_high"] = float(low), float(high)
        out["p_value"] = float(result.pvalue)
    out["significant"] = out["p_value"] < ALPHA
    return out


# -- rendering -------------------------------------------------------------


def format_params(params: str) -> str:
    """``{"c":0.5}`` as ``c=0.5``; the empty configuration as ``defaults``."""
    try:
        values = json.loads(params)
    except (TypeError, ValueError):
        return str(params)
    if not values:
        return "defaults"
    return ", ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items()
    )


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _pct(x) -> str:
    return NO_VALUE if _missing(x) else f"{100 * x:.1f}"


def _pct_pm(mean, std) -> str:
    if _missing(mean):
        return NO_VALUE
    return _pct(mean) if _missing(std) else f"{_pct(mean)} ± {100 * std:.1f}"


def _seconds(x) -> str:
    if _missing(x):
        return NO_VALUE
    return f"{x:.1f} s" if x < 60 else f"{x / 60:.1f} min"


def _versus(row) -> str:
    if row["is_baseline"]:
        return "baseline"
    if row["n_pairs"] < 2:
        return "n/a"
    mark = " *" if row["significant"] else ""
    mean, low, high = (100 * row[c] for c in ("diff_mean", "diff_low", "diff_high"))
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{mark}"


def headers(lb: Leaderboard) -> list[str]:
    """Column names of the rendered tables."""
    return [
        "Rank",
        "Method",
        "Params",
        *(f"OOD @{c}" for c in lb.class_sizes),
        "Mean OOD",
        "ID",
        "Gap",
        "Conflict",
        "Seeds",
        "Params (#)",
        "Time/cell",
        "vs baseline",
    ]


def table_rows(lb: Leaderboard, variant: str) -> list[list[str]]:
    """The rows of one variant's table, formatted as text, in rank order."""
    out = []
    for _, row in lb.tables[variant].iterrows():
        num_params = row["num_params"]
        out.append(
            [
                NO_VALUE if _missing(row["rank"]) else str(int(row["rank"])),
                row["method"],
                format_params(row["params"]),
                *(
                    _pct_pm(row[f"ood_{c}"], row[f"ood_{c}_std"])
                    for c in lb.class_sizes
                ),
                _pct(row["ood_mean"]),
                _pct(row["id_mean"]),
                _pct(row["gap"]),
                _pct(row["conflict_mean"]),
                f"{row['seeds_done']}/{row['seeds_expected']}",
                NO_VALUE if _missing(num_params) else f"{int(num_params):,}",
                _seconds(row["train_seconds"]),
                _versus(row),
            ]
        )
    return out


def _variant_title(variant: str) -> str:
    known = VARIANTS.get(variant)
    text = known.description if known else f"{variant} digits"
    return text[0].upper() + text[1:]


def legend(lb: Leaderboard) -> list[str]:
    """Sentences explaining the columns, one per line."""
    chosen = []
    if lb.selected:
        shown = ", ".join(map(str, lb.selected))
        every = ", ".join(map(str, lb.protocol.class_sizes))
        chosen = [
            (
                f"Ranked on class sizes {shown} only (of the protocol's {every}): "
                "means and seeds count those class sizes alone."
            )
        ]
    return chosen + [
        (
            "Accuracies are in %. OOD @c: accuracy on test digits over unseen "
            "backgrounds after training with c backgrounds per class, mean ± std "
            "over seeds."
        ),
        (
            "Mean OOD, ID and Conflict: means over class sizes; Gap = ID − Mean OOD. "
            "Conflict: backgrounds taken from another class, so the shortcut points "
            "to a wrong digit."
        ),
        (
            "Seeds: seeds finished at every class size, out of the protocol's; "
            "means use finished cells only. Time/cell: mean training time."
        ),
        (
            f"vs baseline: mean paired OOD difference from {lb.baseline!r} in "
            "percentage points with its 95% confidence interval, paired on cells "
            "with the same class size, seed and split fingerprint; * marks p < 0.05 "
            "in a two-sided paired t-test (uncorrected for the number of rows); "
            "n/a: fewer than 2 pairs."
        ),
    ]


def to_markdown(
    lb: Leaderboard,
    figures: dict[str, str | Path] | None = None,
    notes: str | None = None,
) -> str:
    """The leaderboard as a Markdown page: one table per variant, then the legend.

    ``notes`` (Markdown: how the results were produced) go under the title.
    """
    figures = figures or {}
    lines = [f"# Leaderboard: {lb.protocol.key}", "", lb.protocol.description, ""]
    if notes:
        lines += [notes.strip(), ""]
    for variant in lb.tables:
        lines += [f"## {_variant_title(variant)}", ""]
        if variant in figures:
            link = Path(figures[variant]).as_posix()
            lines += [f"![OOD and ID accuracy vs class size, {variant}]({link})", ""]
        names = headers(lb)
        table = tabulate(
            table_rows(lb, variant),
            headers=names,
            tablefmt="github",
            disable_numparse=True,
            colalign=["left" if i in (1, 2) else "right" for i in range(len(names))],
        )
        lines += [table, ""]
    if not lb.tables:
        lines += ["No finished results yet.", ""]

    lines += ["## How to read the tables", ""]
    lines += [f"- {sentence}" for sentence in legend(lb)]
    lines.append("")

    if not lb.failures.empty:
        lines += ["## Failed and diverged cells", ""]
        lines += [
            tabulate(
                _failure_rows(lb),
                headers=_FAILURE_HEADERS,
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    if lb.stale:
        lines += ["## Stale results left out", ""]
        lines += [f"- {_stale_line(g)}" for g in lb.stale]
        lines.append("")
    return "\n".join(lines)


def _stale_line(g: StaleGroup) -> str:
    rows = "1 row" if g.rows == 1 else f"{g.rows} rows"
    return f"{g.method}: {rows} ({g.protocol}), {g.reason}"


_FAILURE_HEADERS = [
    "Method",
    "Params",
    "Variant",
    "Class size",
    "Seed",
    "Status",
    "Error",
]


def _failure_rows(lb: Leaderboard) -> list[list[str]]:
    return [
        [
            r.method,
            format_params(r.params),
            r.variant,
            str(r.class_size),
            str(r.seed),
            r.status,
            r.error.replace("|", "/"),
        ]
        for r in lb.failures.itertuples(index=False)
    ]


def render_rich(lb: Leaderboard, console) -> None:
    """Print the leaderboard's tables, failures and stale rows to a rich console."""
    from rich.table import Table
    from rich.text import Text

    console.print(f"[bold]Leaderboard: {lb.protocol.key}[/bold]")
    for variant in lb.tables:
        table = Table(title=_variant_title(variant), title_justify="left")
        for i, name in enumerate(headers(lb)):
            justify = "left" if i in (1, 2) else "right"
            table.add_column(name, justify=justify)
        for row in table_rows(lb, variant):
            table.add_row(*(Text(cell) for cell in row))  # names are not markup
        console.print(table)
    if not lb.tables:
        console.print("No finished results yet.")
    for sentence in legend(lb):
        console.print(sentence, style="dim", markup=False)

    if not lb.failures.empty:
        table = Table(title="Failed and diverged cells", title_justify="left")
        for name in _FAILURE_HEADERS:
            table.add_column(name)
        for row in _failure_rows(lb):
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
    for g in lb.stale:
        console.print(f"left out as stale: {_stale_line(g)}", markup=False)


def _has_curve(row, sizes) -> bool:
    """True when a configuration has OOD results at two class sizes or more."""
    return sum(not _missing(row[f"ood_{c}"]) for c in sizes) >= 2


def _label(method: str, params: str) -> str:
    shown = format_params(params)
    return method if shown == "defaults" else f"{method} ({shown})"


def _draw_curve(ax, sizes, means, stds, colour, label, linestyle="-") -> None:
    """A line through the class sizes that have a value, with ± std bars.

    Every value drawn is a share, so the bars stop at 0% and 100%: one
    collapsed seed can make the std larger than the distance to either end.
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    present = ~np.isnan(means)
    mean, std = means[present], np.nan_to_num(stds[present])
    below, above = np.minimum(std, mean), np.minimum(std, 1.0 - mean)
    ax.errorbar(
        sizes[present],
        100 * mean,
        yerr=100 * np.stack([below, above]),
        color=colour,
        linestyle=linestyle,
        marker="o",
        markersize=3,
        capsize=3,
        label=label,
    )


def _class_size_axis(ax, sizes) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(c) for c in sizes])
    ax.set_xlabel("class size (training backgrounds per digit class)")
    ax.grid(True, alpha=0.3)


def plot(lb: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """One PNG per variant: OOD (solid) and ID (dashed) accuracy vs class size.

    Configurations run at a single class size (a parameter grid) have no curve
    to draw; the heatmaps show them. A configuration keeps its colour across
    variants and figures.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = lb.colours()
    sizes = np.array(lb.class_sizes)
    written = {}
    for variant, table in lb.tables.items():
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        ax = fig.add_subplot()
        rows = {(r["method"], r["params"]): r for _, r in table.iterrows()}
        drawn = [c for c in colours if c in rows and _has_curve(rows[c], sizes)]
        for config in drawn:
            row = rows[config]
            for split, style in (("ood", "-"), ("id", "--")):
                _draw_curve(
                    ax,
                    sizes,
                    [row[f"{split}_{c}"] for c in sizes],
                    [row[f"{split}_{c}_std"] for c in sizes],
                    colours[config],
                    # One legend entry per configuration; the title says which
                    # line style is which.
                    _label(*config) if split == "ood" else "_nolegend_",
                    linestyle=style,
                )
        _class_size_axis(ax, sizes)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{_variant_title(variant)}: OOD (solid) and ID (dashed)")
        if drawn:
            ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5))
        path = out_dir / f"{variant}.png"
        fig.savefig(path, dpi=120)
        written[variant] = path
    return written


# -- per class size: conflict accuracy and mask precision -------------------

MASK_METRICS = (
    "mask_digit_mass_share",
    "digit_pixel_share",
    "mask_mean_on_digit",
    "mask_mean_on_background",
)


def _ok_with_metrics(lb: Leaderboard) -> pd.DataFrame:
    """The finished rows, with each key of the ``metrics`` JSON as a column."""
    ok = lb.rows[lb.rows["status"] == "ok"].copy()
    parsed = [json.loads(m) if isinstance(m, str) else {} for m in ok["metrics"]]
    extra = pd.DataFrame(parsed, index=ok.index)
    return pd.concat([ok, extra.drop(columns=ok.columns, errors="ignore")], axis=1)


def per_class_size(lb: Leaderboard, variant: str, column: str) -> pd.DataFrame:
    """Mean and std over seeds of ``column`` for every configuration (rows:
    method, params) and class size (columns: ``<k>`` and ``<k>_std``), for
    the configurations of ``variant`` that have it at two class sizes or more.
    """
    ok = _ok_with_metrics(lb)
    if column not in ok.columns:
        return pd.DataFrame()
    ok = ok[(ok["variant"] == variant) & ok[column].notna()]
    records = []
    for method, params in lb.configurations():
        mine = ok[(ok["method"] == method) & (ok["params"] == params)]
        if mine["class_size"].nunique() < 2:
            continue
        record = {"method": method, "params": params}
        for c in lb.class_sizes:
            record[str(c)], record[f"{c}_std"] = _mean_std(
                mine.loc[mine["class_size"] == c, column]
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def _class_size_rows(lb: Leaderboard, table: pd.DataFrame) -> list[list[str]]:
    return [
        [
            row["method"],
            format_params(row["params"]),
            *(_pct_pm(row[str(c)], row[f"{c}_std"]) for c in lb.class_sizes),
        ]
        for _, row in table.iterrows()
    ]


def _class_size_markdown(lb: Leaderboard, table: pd.DataFrame) -> str:
    names = ["Method", "Params", *(f"@{c}" for c in lb.class_sizes)]
    return tabulate(
        _class_size_rows(lb, table),
        headers=names,
        tablefmt="github",
        disable_numparse=True,
        colalign=["left", "left", *("right" for _ in lb.class_sizes)],
    )


def plot_per_class_size(
    lb: Leaderboard,
    column: str,
    path: str | Path,
    ylabel: str,
    reference: str | None = None,
) -> Path | None:
    """One panel per variant: ``column`` against class size, a line per
    configuration; ``reference`` (another column) is drawn dashed, in grey, as
    its mean over every configuration. None when there is nothing to draw."""
    from matplotlib.figure import Figure

    tables = {v: per_class_size(lb, v, column) for v in lb.protocol.variants}
    tables = {v: t for v, t in tables.items() if not t.empty}
    if not tables:
        return None
    colours = lb.colours()
    sizes = np.array(lb.class_sizes)
    fig = Figure(figsize=(6 * len(tables) + 2, 4.2), layout="constrained")
    axes = fig.subplots(1, len(tables), sharey=True, squeeze=False)[0]
    handles = {}
    for ax, (variant, table) in zip(axes, tables.items()):
        for _, row in table.iterrows():
            config = (row["method"], row["params"])
            _draw_curve(
                ax,
                sizes,
                [row[str(c)] for c in sizes],
                [row[f"{c}_std"] for c in sizes],
                colours.get(config, "black"),
                _label(*config),
            )
        if reference is not None:
            ref = per_class_size(lb, variant, reference)
            if not ref.empty:
                means = np.array([ref[str(c)].mean() for c in sizes], dtype=float)
                present = ~np.isnan(means)
                ax.plot(
                    sizes[present],
                    100 * means[present],
                    color="grey",
                    linestyle="--",
                    label=reference.replace("_", " "),
                )
        _class_size_axis(ax, sizes)
        ax.set_title(_variant_title(variant))
        # The legend gathers every panel's entries: a configuration may be
        # missing from one variant.
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(
        handles.values(),
        handles.keys(),
        fontsize="small",
        loc="center left",
        bbox_to_anchor=(1.02, 0.5),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _section(
    lb: Leaderboard,
    column: str,
    figure: Path,
    title: str,
    ylabel: str,
    text: str,
    reference: str | None = None,
) -> list[str]:
    """Markdown lines for one per-class-size measure: a heading, what it means,
    a figure and one table per variant; empty when no configuration has the
    measure at two class sizes. ``reference`` (another column, such as the
    share of digit pixels) is drawn dashed and added as a last table row."""
    tables = {v: per_class_size(lb, v, column) for v in lb.tables}
    if all(t.empty for t in tables.values()):
        return []
    drawn = plot_per_class_size(lb, column, figure, ylabel, reference=reference)
    lines = [f"## {title}", "", text, ""]
    if drawn:
        lines += [f"![{title} vs class size]({drawn.name})", ""]
    for variant, table in tables.items():
        if table.empty:
            continue
        ref = per_class_size(lb, variant, reference) if reference else pd.DataFrame()
        if not ref.empty:
            row = {"method": reference.replace("_", " "), "params": "{}"}
            for c in lb.class_sizes:
                row[str(c)], row[f"{c}_std"] = ref[str(c)].mean(), math.nan
            table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        lines += [f"### {_variant_title(variant)}", "", _class_size_markdown(lb, table)]
        lines.append("")
    return lines


def shortcut_sections(lb: Leaderboard, out_dir: str | Path) -> str:
    """Markdown (with figures written to ``out_dir``) for conflict accuracy,
    mask precision and how much background the masks let through, per class
    size; empty when none has two class sizes."""
    out_dir = Path(out_dir)
    lines = _section(
        lb,
        "conflict_test_acc",
        out_dir / "conflict.png",
        "Shortcut reliance: conflict accuracy",
        "conflict accuracy (%)",
        "Accuracy on unseen digits drawn on backgrounds from "
        "another class's training pool, so the background points to a wrong "
        "digit. Near 0% means the model reads the background, near ID accuracy "
        "means it reads the digit. Mean ± std over seeds, in %.",
    )
    lines += _section(
        lb,
        "mask_digit_mass_share",
        out_dir / "mask-precision.png",
        "Mask precision",
        "mask mass on digit pixels (%)",
        "The share of the mask's total mass that falls on digit "
        "pixels (digit intensity above one half) over the whole ood_test split; "
        "compositing knows those pixels exactly. A uniform mask, all ones "
        "included, scores the share of pixels that are digit (the row "
        "`digit pixel share`). Mean ± std over seeds, in %.",
        reference="digit_pixel_share",
    )
    lines += _section(
        lb,
        "mask_mean_on_background",
        out_dir / "mask-background.png",
        "Mask on background pixels",
        "mean mask on background pixels (%)",
        "The mean mask value on background pixels of ood_test, in %: 100 means "
        "the background reaches the classifier unchanged (together with a mean "
        "near 100 on digit pixels, the mask is all ones), 0 that it is masked "
        "out. Mean ± std over seeds.",
    )
    return "\n".join(lines)


def heatmaps(
    lb: Leaderboard, out_dir: str | Path, class_size: int | None = None
) -> dict:
    """For each method swept over exactly two parameters: ID and OOD accuracy over
    that grid at one class size, one PNG per (method, variant).

    ``class_size`` defaults to 16 when the results have it, else the median one.
    Returns {(method, variant): path}.
    """
    from matplotlib.figure import Figure

    ok = lb.rows[lb.rows["status"] == "ok"]
    if ok.empty:
        return {}
    sizes = sorted(ok["class_size"].unique())
    k = (
        class_size
        if class_size is not None
        else (16 if 16 in sizes else sizes[len(sizes) // 2])
    )
    written = {}
    for (method, variant), group in ok[ok["class_size"] == k].groupby(
        ["method", "variant"]
    ):
        params = pd.DataFrame(
            [json.loads(p) for p in group["params"]], index=group.index
        )
        swept = [c for c in params.columns if params[c].nunique() > 1]
        if len(swept) != 2:
            continue
        rows_key, cols_key = swept
        data = pd.concat(
            [params[swept], group[["id_test_acc", "ood_test_acc"]]], axis=1
        )
        fig = Figure(figsize=(9, 3.8), layout="constrained")
        for i, (metric, title) in enumerate(
            (("id_test_acc", "ID"), ("ood_test_acc", "OOD"))
        ):
            grid = data.pivot_table(
                index=rows_key, columns=cols_key, values=metric, aggfunc="mean"
            )
            ax = fig.add_subplot(1, 2, i + 1)
            image = ax.imshow(
                100 * grid.to_numpy(), cmap="viridis", origin="lower", aspect="auto"
            )
            ax.set_xticks(range(len(grid.columns)), [f"{v:g}" for v in grid.columns])
            ax.set_yticks(range(len(grid.index)), [f"{v:g}" for v in grid.index])
            ax.set_xlabel(cols_key)
            ax.set_ylabel(rows_key)
            ax.set_title(f"{title} accuracy (%)")
            for (r, c), value in np.ndenumerate(100 * grid.to_numpy()):
                ax.text(
                    c,
                    r,
                    f"{value:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w",
                )
            fig.colorbar(image, ax=ax, shrink=0.8)
        fig.suptitle(
            f"{method} · {_variant_title(variant)} · class size {k} · mean over seeds"
        )
        path = Path(out_dir) / f"{method}-{variant}-k{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        written[(method, variant)] = path
    return written


def publish(
    df: pd.DataFrame,
    protocol: Protocol | None,
    out_dir: str | Path,
    baseline: str = "baseline",
    expected_fingerprints: dict[tuple[str, int, int], str] | None = None,
    notes: str | None = None,
    class_sizes: list[int] | tuple[int, ...] | None = None,
) -> Leaderboard:
    """Write ``README.md``, one PNG per variant, conflict-accuracy and
    mask-precision figures, noise heatmaps and ``results.csv`` into ``out_dir``.

    ``results.csv`` holds the raw per-seed rows the leaderboard was made from
    (failed and diverged ones included, stale ones not).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lb = aggregate(df, protocol, baseline, expected_fingerprints, class_sizes)
    figures = plot(lb, out_dir)
    relative = {variant: path.name for variant, path in figures.items()}
    markdown = to_markdown(lb, relative, notes)
    extra = shortcut_sections(lb, out_dir)
    if extra:
        markdown += "\n" + extra
    grids = heatmaps(lb, out_dir)
    if grids:
        markdown += "\n## Parameter grids\n\n"
        for (method, variant), path in sorted(grids.items()):
            markdown += f"![{method}, {variant} digits]({path.name})\n\n"
    (out_dir / "README.md").write_text(markdown, encoding="utf-8")
    lb.rows.to_csv(out_dir / "results.csv", index=False)
    log.info("published the %s leaderboard in %s", lb.protocol.key, out_dir)
    return lb
