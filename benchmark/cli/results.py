"""`ood-bench results`: what the results file holds, or its rows as CSV."""

from __future__ import annotations

import argparse
import sys

from rich.table import Table

from benchmark.cli.common import console

NAME = "results"
HELP = "Summarise the stored results by method and status, or export them as CSV."
EPILOG = """examples:
  ood-bench results
  ood-bench results --protocol standard
  ood-bench results --csv standard.csv --protocol standard
  ood-bench results --csv - | head

The results file is --results, else $OOD_BENCH_RESULTS, else
results/ood-bench.sqlite in the current directory.
"""


def add_results_path(parser: argparse.ArgumentParser) -> None:
    """The --results option, shared with `ood-bench leaderboard`."""
    parser.add_argument(
        "--results",
        metavar="PATH",
        default=None,
        help="the results file; default: $OOD_BENCH_RESULTS, "
        "else results/ood-bench.sqlite",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_results_path(parser)
    parser.add_argument(
        "--protocol", metavar="NAME", help="only rows of this protocol (e.g. standard)"
    )
    parser.add_argument(
        "--csv",
        metavar="FILE",
        help="write every row, one per cell, as CSV to FILE ('-' for standard output)",
    )


def run(args: argparse.Namespace) -> int:
    from benchmark.store import ResultStore, default_results_path

    path = args.results or default_results_path()
    with ResultStore(path, create=False) as store:
        if args.csv == "-":
            store.to_csv(sys.stdout, protocol=args.protocol)
            return 0
        if args.csv:
            store.to_csv(args.csv, protocol=args.protocol)
            return 0
        df = store.frame(protocol=args.protocol)

    if df.empty:
        console.print(
            f"{path}: no results" + (f" of {args.protocol}" if args.protocol else "")
        )
        return 0
    df["protocol"] = df["protocol"] + "@v" + df["protocol_version"].astype(str)
    counts = (
        df.groupby(["protocol", "method", "params", "status"])
        .size()
        .unstack(fill_value=0)
    )
    statuses = ["ok", "diverged", "failed"]
    table = Table(title=f"Results in {path}", title_justify="left")
    for name in ("Protocol", "Method", "Params"):
        table.add_column(name)
    for status in statuses:
        table.add_column(status.capitalize(), justify="right")
    for (protocol, method, params), row in counts.iterrows():
        table.add_row(
            protocol, method, params, *(str(int(row.get(s, 0))) for s in statuses)
        )
    console.print(table)
    return 0
