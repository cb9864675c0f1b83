"""`ood-bench leaderboard`: ranked tables from the results file, optionally published."""

from __future__ import annotations

import argparse

from benchmark.cli.common import add_data_root, console
from benchmark.cli.results import add_results_path
from benchmark.protocol import get_protocol

NAME = "leaderboard"
HELP = (
    "Rank method configurations by mean OOD accuracy, with tests against the baseline."
)
EPILOG = """examples:
  ood-bench leaderboard
  ood-bench leaderboard --protocol standard --out leaderboards/standard
  ood-bench leaderboard --protocol quick --baseline baseline
  ood-bench leaderboard --protocol standard --class-sizes 1,8,64

One table per variant: OOD accuracy at each class size (mean ± std over
seeds), mean OOD, ID, gap, conflict accuracy, and the paired difference from
the baseline with its 95% confidence interval (* when p < 0.05). Results of
an older protocol version, or whose split fingerprint differs from the one
the data give (checked when the data are found), are left out and reported
as stale; failed cells are listed. A row is ranked once it has every class
size; --class-sizes ranks on some of them, so configurations run at only
those class sizes can be compared. With --out, README.md, the figures and
results.csv are written to DIR.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_results_path(parser)
    parser.add_argument(
        "--protocol",
        metavar="NAME",
        help="the protocol to rank (default: the only one in the results file)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="also publish there: README.md with the tables, PNG figures, results.csv",
    )
    parser.add_argument(
        "--baseline",
        metavar="NAME",
        default="baseline",
        help="the method the others are tested against (default: baseline)",
    )
    parser.add_argument(
        "--class-sizes",
        action="append",
        metavar="K[,K...]",
        help="rank on these class sizes of the protocol only (default: all of them)",
    )
    parser.add_argument(
        "--notes",
        metavar="FILE.md",
        help="with --out: Markdown put under the title (commands, machine, wall time)",
    )
    add_data_root(parser)


def run(args: argparse.Namespace) -> int:
    from benchmark.leaderboard import aggregate, publish, render_rich
    from benchmark.runner import parse_int_list
    from benchmark.store import ResultStore, default_results_path

    protocol = get_protocol(args.protocol) if args.protocol else None
    class_sizes = parse_int_list(args.class_sizes, "--class-sizes")
    with ResultStore(args.results or default_results_path(), create=False) as store:
        df = store.frame(protocol=protocol.name if protocol else None)

    expected = _expected_fingerprints(df, protocol, args) if not df.empty else None
    if args.out:
        notes = _read_notes(args.notes) if args.notes else None
        lb = publish(
            df,
            protocol,
            args.out,
            baseline=args.baseline,
            expected_fingerprints=expected,
            notes=notes,
            class_sizes=class_sizes,
        )
    else:
        lb = aggregate(
            df,
            protocol,
            baseline=args.baseline,
            expected_fingerprints=expected,
            class_sizes=class_sizes,
        )
    render_rich(lb, console)
    if args.out:
        console.print(f"published to {args.out}/README.md", markup=False)
    return 0


def _read_notes(path: str) -> str:
    from benchmark.errors import BenchmarkError

    try:
        return open(path, encoding="utf-8").read()
    except OSError as exc:
        raise BenchmarkError(f"cannot read --notes {path}: {exc.strerror}") from None


def _expected_fingerprints(df, protocol, args) -> dict | None:
    """The split fingerprint the data give for each (variant, class size, seed)
    in the results, or None (with a note) when the data cannot be loaded."""
    from benchmark.errors import BenchmarkError
    from benchmark.protocol import PROTOCOLS
    from benchmark.runner import Workspace
    from benchmark.sources import resolve_data_root

    names = set(df["protocol"])
    if protocol is None and len(names) != 1:
        return None  # aggregate() asks the user to choose a protocol
    protocol = protocol or PROTOCOLS.get(names.pop())
    if protocol is None:
        return None
    try:
        ws = Workspace.load(
            resolve_data_root(args.data_root), outside_plugins=False, download=False
        )
    except BenchmarkError as exc:
        console.print(f"[dim]split fingerprints not checked: {exc}[/]")
        return None
    cells = df[["variant", "class_size", "seed"]].drop_duplicates()
    expected = {}
    for variant, k, seed in cells.itertuples(index=False):
        try:
            cell = ws.splits(protocol, variant, int(k), int(seed))
        except BenchmarkError:
            continue  # a variant or class size these data cannot make: stale
        expected[(variant, int(k), int(seed))] = cell.fingerprint
    return expected
