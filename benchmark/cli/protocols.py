"""`ood-bench protocols`: list the protocols, or show one with its fingerprints."""

from __future__ import annotations

import argparse

from rich.table import Table

from benchmark.cli.common import add_data_root, console
from benchmark.protocol import PROTOCOLS, get_protocol

NAME = "protocols"
HELP = "List the benchmark protocols, or show one in full with its split fingerprints."
EPILOG = """examples:
  ood-bench protocols
  ood-bench protocols standard
  ood-bench protocols quick --variant white
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="the protocol to show in full")
    parser.add_argument(
        "--variant",
        action="append",
        help="fingerprints for this variant (repeatable; default: the protocol's own)",
    )
    add_data_root(parser)


def run(args: argparse.Namespace) -> int:
    from benchmark.compose import VARIANTS

    if args.name is None:
        table = Table(title="Protocols")
        for column in (
            "name",
            "version",
            "class sizes",
            "variants",
            "seeds",
            "budget",
            "about",
        ):
            table.add_column(column)
        for p in PROTOCOLS.values():
            b = p.budget
            table.add_row(
                p.name,
                str(p.version),
                " ".join(map(str, p.class_sizes)),
                " ".join(p.variants),
                " ".join(map(str, p.seeds)),
                f"{b.epochs} ep · batch {b.batch_size} · {b.optimizer} lr {b.lr:g}",
                p.description,
            )
        console.print(table)
        console.print(f"Foreground variants: {', '.join(VARIANTS)}")
        return 0

    protocol = get_protocol(args.name)
    from benchmark.compose import get_variant

    variants = args.variant or list(protocol.variants)
    for v in variants:
        get_variant(v)
    console.print(f"[bold]{protocol.key}[/]: {protocol.description}")
    for key, value in protocol.definition().items():
        if key not in ("name", "version", "description"):
            console.print(f"  {key}: {value}")

    workspace = _workspace(args)
    table = Table(title=f"Split fingerprints of {protocol.key}")
    for column in (
        "variant",
        "class size",
        "seed",
        "train",
        "id_val",
        "id_test",
        "fingerprint",
    ):
        table.add_column(column)
    for v in variants:
        for k in protocol.class_sizes:
            for seed in protocol.seeds:
                cell = workspace.splits(protocol, v, k, seed)
                table.add_row(
                    v,
                    str(k),
                    str(seed),
                    str(len(cell["train"])),
                    str(len(cell["id_val"])),
                    str(len(cell["id_test"])),
                    cell.fingerprint,
                )
    console.print(table)
    return 0


def _workspace(args):
    from benchmark.runner import Workspace
    from benchmark.sources import resolve_data_root

    return Workspace.load(
        resolve_data_root(args.data_root),
        progress=True,
        outside_plugins=False,
        download=not args.no_download,
    )
