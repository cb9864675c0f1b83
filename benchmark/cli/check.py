"""`ood-bench check`: the conformance check a method plugin must pass."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rich.markup import escape

from benchmark.cli.common import add_plugin_switches, console
from benchmark.errors import PluginError

if TYPE_CHECKING:
    from rich.console import Console

NAME = "check"
HELP = "Check that a method keeps the plugin contract, on a tiny synthetic split."
EPILOG = """\
Loads and validates the method, builds the model for every configuration of
its sweep, trains a few steps on synthetic images, and checks that one seed
gives bit-identical results and that evaluation is free of the training
transform and of randomness. Exit status: 0 all checks pass, 1 a check
fails, 2 bad input (unknown method, bad --param, broken plugin).

Examples:
  ood-bench check noise
  ood-bench check noise --param fraction=0.1,1.0 --param intensity=1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", metavar="METHOD", help="the method to check")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help=(
            "check these values (repeatable; a grid over all given); "
            "without it the method's defaults are trained"
        ),
    )
    add_plugin_switches(parser)


def run(args: argparse.Namespace) -> int:
    from benchmark.conformance import run_checks
    from benchmark.registry import load_registry, validate_model

    registry = load_registry(disable=args.disable, outside=not args.no_outside_plugins)
    method = registry.get(args.method)
    configs = registry.parse_params(method, args.param)
    trained = configs if args.param else [method.defaults()]
    console.print(f"checking {method.name} ({registry.source(method.name)})")

    # Building every swept configuration is cheap and catches a model that
    # breaks for only some values before a long run meets it.
    failed = 0
    for params in configs:
        try:
            validate_model(method, params)
        except PluginError as exc:
            _report(console, False, "builds", params, str(exc))
            failed += 1
    if not failed:
        _report(console, True, "builds", None, f"{len(configs)} configuration(s)")

    for params in trained:
        for result in run_checks(method, params):
            _report(console, result.passed, result.name, params, result.detail)
            failed += not result.passed

    if failed:
        console.print(f"[red]{failed} check(s) failed[/]")
        return 1
    console.print("[green]all checks passed[/]")
    return 0


def _report(
    console: Console, passed: bool, name: str, params: dict | None, detail: str
) -> None:
    mark = "[green]pass[/]" if passed else "[red]FAIL[/]"
    where = f" {params}" if params else ""
    console.print(f"{mark} {name}{escape(where)}: {escape(detail)}")
