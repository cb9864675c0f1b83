"""An outside method plugin, built and installed for real, then found, checked, disabled.

The package in tests/example_plugin is installed into the running environment
for this module's tests and uninstalled afterwards.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.registry import DISABLE_ENV, load_registry

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parent / "example_plugin"
DIST = "ood-bench-example-plugin"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def _ood_bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    # A wide terminal keeps rich from wrapping names across table lines.
    full_env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    full_env.update(COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        check=False,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


@pytest.fixture(scope="module", autouse=True)
def installed_example(tmp_path_factory):
    """The example plugin installed from a copy, so build files stay out of the repo."""
    source = tmp_path_factory.mktemp("example") / "example_plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__"))
    # No network here: build with the setuptools already installed.
    try:
        _pip(
            "install",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            str(source),
        )
        importlib.invalidate_caches()
        yield
    finally:
        _pip("uninstall", "-q", "-y", DIST)
        importlib.invalidate_caches()


@pytest.fixture(autouse=True)
def _no_disable_env(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def test_methods_lists_the_outside_method_with_its_distribution():
    done = _ood_bench("methods")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "tiny_mlp" in line)
    assert f"{DIST} 0.1.0" in row
    assert "baseline" in done.stdout


def test_check_passes_for_the_outside_method():
    done = _ood_bench("check", "tiny_mlp", "--param", "hidden=16")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout


def test_environment_variable_disables_every_outside_plugin():
    done = _ood_bench("methods", **{DISABLE_ENV: "all"})
    assert done.returncode == 0, done.stderr
    assert "tiny_mlp" not in done.stdout and "baseline" in done.stdout


def test_registry_reports_the_source():
    registry = load_registry()
    assert registry.source("tiny_mlp") == f"{DIST} 0.1.0"
    assert registry.plugins["tiny_mlp"] == "example"


@pytest.mark.parametrize(
    "switches",
    [["--disable", "example"], ["--disable", DIST], ["--no-outside-plugins"]],
)
def test_switches_disable_the_outside_plugin(capsys, switches):
    assert main(["methods", *switches]) == 0
    out = capsys.readouterr().out
    assert "tiny_mlp" not in out and "baseline" in out


def test_environment_variable_disables_by_name(monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, f"something-else,{DIST}")
    assert "tiny_mlp" not in load_registry().methods
