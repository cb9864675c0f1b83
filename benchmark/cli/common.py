"""Arguments and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console

# Wide tables stay readable when output goes to a file or a pipe, where rich
# would otherwise assume 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        metavar="DIR",
        help="where MNIST and CIFAR-10 are (or are downloaded to); "
        "default: $OOD_BENCH_DATA, else a per-user cache directory",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="fail instead of downloading MNIST or CIFAR-10 when they are missing",
    )


def add_plugin_switches(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-outside-plugins",
        action="store_true",
        help="load only the built-in methods, none from installed packages",
    )
    parser.add_argument(
        "--disable",
        metavar="PLUGIN",
        action="append",
        default=[],
        help="skip one outside plugin, by entry-point or distribution name (repeatable)",
    )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}
