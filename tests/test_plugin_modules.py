"""Plugin modules named in OOD_BENCH_PLUGINS are loaded without installing a package."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmark.errors import PluginError
from benchmark.registry import PLUGINS_ENV, load_registry

TESTS = str(Path(__file__).resolve().parent)
FAULT_METHODS = {"fault_build", "fault_cell_build", "fault_train", "fault_nan"}


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(TESTS)


def test_listed_module_adds_its_methods_with_their_source(monkeypatch, on_path):
    monkeypatch.setenv(PLUGINS_ENV, " fault_plugins , fault_plugins,")
    registry = load_registry()
    assert FAULT_METHODS <= set(registry.methods)
    assert registry.source("fault_nan") == f"{PLUGINS_ENV}=fault_plugins"
    assert "baseline" in registry.methods


@pytest.mark.parametrize(
    "kwargs",
    [{"outside": False}, {"disable": ["fault_plugins"]}],
    ids=["off", "disabled"],
)
def test_listed_module_is_skipped_like_any_outside_plugin(monkeypatch, on_path, kwargs):
    monkeypatch.setenv(PLUGINS_ENV, "fault_plugins")
    assert not FAULT_METHODS & set(load_registry(**kwargs).methods)


def test_module_also_given_as_an_extra_plugin_is_registered_once(monkeypatch, on_path):
    import fault_plugins

    monkeypatch.setenv(PLUGINS_ENV, "fault_plugins")
    registry = load_registry(extra_plugins=[fault_plugins])
    assert FAULT_METHODS <= set(registry.methods)


def test_module_that_cannot_be_imported_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(PluginError) as info:
        load_registry()
    message = str(info.value)
    assert "'no_such_plugin_module'" in message and PLUGINS_ENV in message
    assert "\n" not in message
    assert "no_such_plugin_module" not in sys.modules
