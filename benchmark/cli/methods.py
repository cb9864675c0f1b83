"""`ood-bench methods`: list every method with its params and where it comes from."""

from __future__ import annotations

import argparse

from rich.table import Table

from benchmark.cli.common import add_plugin_switches, console
from benchmark.method import Method, Param

NAME = "methods"
HELP = "List every method: its params, their defaults and sweeps, and its source."
EPILOG = """\
Built-in methods come with ood-bench; outside methods come from installed
packages that declare an `ood_bench` entry point.

Examples:
  ood-bench methods
  ood-bench methods --no-outside-plugins
  ood-bench methods --disable my-method
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plugin_switches(parser)


def run(args: argparse.Namespace) -> int:
    from benchmark.registry import load_registry

    registry = load_registry(disable=args.disable, outside=not args.no_outside_plugins)
    table = Table(title="Methods", show_lines=True)
    table.add_column("Method", style="bold", no_wrap=True)
    table.add_column("Description")
    table.add_column("Params (type = default, range; sweep)")
    table.add_column("Source", no_wrap=True)
    for name, method in registry.methods.items():
        table.add_row(
            name, method.description, _describe_params(method), registry.source(name)
        )
    console.print(table)
    return 0


def _describe_params(method: Method) -> str:
    if not method.params:
        return "none"
    return "\n".join(_describe_param(p) for p in method.params)


def _describe_param(param: Param) -> str:
    text = f"{param.name}: {param.type.__name__} = {param.default!r}"
    allowed = param.describe_range()
    if allowed:
        text += f", {allowed}"
    if param.sweep:
        text += "; sweep " + ", ".join(f"{v!r}" for v in param.sweep)
    return text
