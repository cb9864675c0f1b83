"""The hooks a method plugin may implement; this module is the whole plugin contract.

A plugin is a module (built in: one file in ``plugins/``; outside: any module
named by an ``ood_bench`` entry point) with functions marked ``@hookimpl`` and
named after a hook below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from benchmark.method import Method

PROJECT = "ood_bench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ood_bench_methods() -> list[Method]:
    """Return the methods this plugin provides, as a list of `Method`.

    Takes no arguments. Called once per plugin when the registry loads, before
    any training; every method returned is validated then, and a method name
    already provided by another plugin is an error.
    """
