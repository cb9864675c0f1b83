"""`ood-bench samples`: a labelled grid of example images from every split."""

from __future__ import annotations

import argparse

from benchmark.cli.common import add_data_root, console
from benchmark.protocol import get_protocol

NAME = "samples"
HELP = "Write a labelled grid of examples from every split, to see the benchmark before running it."
EPILOG = """Each row is a split (train, id_test, ood_test, conflict_test), each column a
digit class; captions give the label y and, for pooled backgrounds, the class
whose pool the background comes from (bg).

examples:
  ood-bench samples --out samples.png
  ood-bench samples --protocol standard --variant white --class-size 4 --out white-k4.png
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol", default="standard", help="protocol name (default: standard)"
    )
    parser.add_argument(
        "--variant", default="black", help="foreground variant (default: black)"
    )
    parser.add_argument(
        "--class-size",
        type=int,
        default=4,
        metavar="K",
        help="backgrounds per class (default: 4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    parser.add_argument(
        "--per-class",
        type=int,
        default=1,
        metavar="N",
        help="examples per class (default: 1)",
    )
    parser.add_argument(
        "--out", default="samples.png", metavar="FILE.png", help="where to write"
    )
    add_data_root(parser)


def run(args: argparse.Namespace) -> int:
    from benchmark.compose import get_variant
    from benchmark.errors import BenchmarkError
    from benchmark.figures import sample_grid
    from benchmark.runner import Workspace
    from benchmark.sources import resolve_data_root

    protocol = get_protocol(args.protocol)
    get_variant(args.variant)
    if not 1 <= args.per_class <= 5:
        raise BenchmarkError("--per-class must be between 1 and 5")
    workspace = Workspace.load(
        resolve_data_root(args.data_root),
        progress=True,
        outside_plugins=False,
        download=not args.no_download,
    )
    cell = workspace.splits(protocol, args.variant, args.class_size, args.seed)
    path = sample_grid(cell, workspace.bank, args.out, per_class=args.per_class)
    console.print(f"wrote {path} ({protocol.key}, fingerprint {cell.fingerprint})")
    return 0
