"""The `ood-bench` command line: one module per subcommand, wired up here.

Each subcommand module defines ``NAME``, ``HELP`` (one line), ``EPILOG``
(examples), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from rich.console import Console

from benchmark import __version__
from benchmark.errors import BenchmarkError

# Order is the order shown in `ood-bench --help`.
COMMANDS = [
    "protocols",
    "methods",
    "check",
    "samples",
    "run",
    "results",
    "leaderboard",
    "masks",
]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line with exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        err_console.print(
            f"{self.prog}: error: {message} (see `{self.prog} --help`)",
            markup=False,
        )
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="ood-bench",
        description=(
            "Benchmark out-of-distribution robustness under spurious correlations: "
            "MNIST digits composited onto CIFAR-10 backgrounds."
        ),
        epilog="Example: ood-bench run --method masker --protocol quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"ood-bench {__version__}"
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineErrorParser
    )
    for name in COMMANDS:
        module = importlib.import_module(f"benchmark.cli.{name}")
        cmd = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    logging.basicConfig(
        level=os.environ.get("OOD_BENCH_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so claims on cells
    # that were running are released and every finished cell stays stored.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return args._run(args) or 0
    except BenchmarkError as exc:
        err_console.print(f"ood-bench {args.command}: error: {exc}", markup=False)
        return exc.exit_status
    except KeyboardInterrupt:
        err_console.print(
            "ood-bench: interrupted; finished results are kept.", markup=False
        )
        return 130


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def entry() -> None:
    sys.exit(main())
