"""The method plugin system: validation of broken plugins, the built-ins, the CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import benchmark
from benchmark import Method, Param, hookimpl
from benchmark.cli import main
from benchmark.conformance import run_checks, train_steps
from benchmark.errors import PluginError
from benchmark.registry import load_registry, validate_model

BUILTINS = ("baseline", "masker", "noise")


def _build_lenet(params: dict) -> nn.Module:
    from benchmark.plugins.baseline import LeNet5

    return LeNet5()


def _plugin(*methods: Method, name: str = "bad_plugin") -> type:
    """A plugin object whose hook returns ``methods``."""

    def ood_bench_methods():
        return list(methods)

    return type(
        name, (), {"ood_bench_methods": staticmethod(hookimpl(ood_bench_methods))}
    )


def _load_error(*plugins: object) -> str:
    with pytest.raises(PluginError) as info:
        load_registry(outside=False, extra_plugins=plugins)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def registry():
    return load_registry(outside=False)


# --- the registry and its built-ins -------------------------------------------


def test_builtins_are_found_with_their_source(registry):
    assert set(BUILTINS) <= set(registry.methods)
    for name in BUILTINS:
        assert registry.source(name) == f"ood-bench {benchmark.__version__}"


def test_plugin_file_needs_one_import_line():
    from benchmark.hookspec import hookimpl as real_hookimpl
    from benchmark.method import Method as RealMethod

    assert hookimpl is real_hookimpl and Method is RealMethod


def test_typo_in_method_name_suggests_the_closest(registry):
    with pytest.raises(PluginError, match=r"did you mean 'noise'"):
        registry.get("noize")


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_builds_and_gives_logits(registry, name):
    method = registry.get(name)
    for params in method.sweep_grid():
        validate_model(method, params)
    torch.manual_seed(0)
    model = method.build_model(method.defaults())
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 10)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_passes_the_conformance_checks(registry, name):
    method = registry.get(name)
    results = run_checks(method, method.defaults(), steps=3)
    assert [r.name for r in results if not r.passed] == []
    assert len(results) == 5


def test_validate_model_leaves_the_global_seed_alone(registry):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    validate_model(registry.get("masker"), {"c": 0.0})
    assert torch.equal(torch.rand(3), expected)


def test_sweeps(registry):
    assert registry.get("baseline").sweep_grid() == [{}]
    noise = registry.get("noise").sweep_grid()
    assert len(noise) == 20 and {"fraction": 0.1, "intensity": 0.25} in noise
    assert [p["c"] for p in registry.get("masker").sweep_grid()] == [
        -1.0,
        -0.5,
        0.0,
        0.5,
        1.0,
    ]


def test_masker_mask_is_one_value_per_pixel_in_0_1(registry):
    method = registry.get("masker")
    model = method.build_model({"c": -1.0})
    x = torch.rand(5, 3, 32, 32)
    mask = model.mask(x)
    assert mask.shape == (5, 1, 32, 32)
    assert mask.min() >= 0 and mask.max() <= 1
    expected = model.classifier(mask * (x - 1.0))
    assert torch.allclose(model(x), expected)


def test_masker_trains(registry):
    method = registry.get("masker")
    images, labels = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
    _, losses = train_steps(method, {"c": 0.5}, images, labels, steps=3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


# --- the noise transform ------------------------------------------------------


def _noise(registry, x, fraction, intensity, seed=0):
    transform = registry.get("noise").train_transform
    params = {"fraction": fraction, "intensity": intensity}
    return transform(x, params, torch.Generator().manual_seed(seed))


def test_noise_with_fraction_0_changes_nothing(registry):
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(_noise(registry, x, 0.0, 1.0), x)


def test_noise_at_full_fraction_and_intensity_forgets_the_image(registry):
    first = _noise(registry, torch.zeros(4, 3, 32, 32), 1.0, 1.0)
    second = _noise(registry, torch.ones(4, 3, 32, 32), 1.0, 1.0)
    assert torch.equal(first, second)
    assert 0 <= first.min() and first.max() <= 1


def test_noise_randomness_comes_only_from_the_generator(registry):
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    first = _noise(registry, x, 0.5, 0.5, seed=3)
    torch.manual_seed(2)
    second = _noise(registry, x, 0.5, 0.5, seed=3)
    other_seed = _noise(registry, x, 0.5, 0.5, seed=4)
    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


def test_noise_picks_pixel_locations_shared_by_the_channels(registry):
    x = torch.full((8, 3, 32, 32), 0.5)
    changed = _noise(registry, x, 0.25, 1.0) != x
    per_location = changed.sum(dim=1)
    assert set(per_location.unique().tolist()) <= {0, 3}
    assert 0.2 < (per_location == 3).float().mean() < 0.3


# --- parameters ---------------------------------------------------------------


def test_parse_params_grid_and_defaults(registry):
    assert registry.parse_params("noise", ["fraction=0,1"]) == [
        {"fraction": 0.0, "intensity": 0.5},
        {"fraction": 1.0, "intensity": 0.5},
    ]
    assert registry.parse_params("masker", []) == registry.get("masker").sweep_grid()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("fraction=abc", "is not a number"),
        ("fraction=1.5", "above the maximum"),
        ("fraction=-0.1", "below the minimum"),
        ("fractoin=0.5", "did you mean 'fraction'"),
        ("fraction", "is not KEY=V1,V2"),
    ],
)
def test_bad_param_values_are_one_line_errors(registry, override, expected):
    with pytest.raises(PluginError, match=expected) as info:
        registry.parse_params("noise", [override])
    assert "noise" in str(info.value) and "ood-bench" in str(info.value)


def test_param_parses_bools_and_ints():
    flag = Param("flag", bool, False)
    assert flag.parse("true") is True and flag.parse("False") is False
    with pytest.raises(ValueError, match="not true or false"):
        flag.parse("maybe")
    width = Param("width", int, 8, low=1)
    assert width.parse("16") == 16
    with pytest.raises(ValueError, match="not an integer"):
        width.parse("1.5")
    choice = Param("kind", str, "a", choices=("a", "b"))
    with pytest.raises(ValueError, match="not one of"):
        choice.parse("c")


# --- broken plugins -----------------------------------------------------------


def test_hookimpl_with_an_argument_the_spec_lacks():
    class extra_argument:
        @staticmethod
        @hookimpl
        def ood_bench_methods(config):
            return []

    message = _load_error(extra_argument)
    assert "extra_argument" in message and "in-process" in message
    assert "config" in message


def test_unknown_hook_name_suggests_the_real_one():
    class typo:
        @staticmethod
        @hookimpl
        def ood_bench_method():
            return []

    message = _load_error(typo)
    assert "'ood_bench_method' is not a hook" in message
    assert "did you mean 'ood_bench_methods'" in message


def test_hook_without_the_marker():
    class unmarked:
        @staticmethod
        def ood_bench_methods():
            return []

    assert "not marked with @hookimpl" in _load_error(unmarked)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (Method("", "d", _build_lenet), "Method.name must be a non-empty string"),
        (Method("m", "", _build_lenet), "Method.description must be"),
        (Method("two words", "d", _build_lenet), "contains whitespace"),
        (Method("m", "d", "not callable"), "build_model is not callable"),
        (Method("m", "d", _build_lenet, train_transform=3), "train_transform is not"),
        (Method("m", "d", _build_lenet, params=[]), "params must be a tuple"),
        (Method("m", "d", _build_lenet, params=("x",)), "not a Param"),
        (
            Method("m", "d", _build_lenet, params=(Param("k", int, 0.5),)),
            "param 'k' default: k=0.5 is a float, expected int",
        ),
        (
            Method("m", "d", _build_lenet, params=(Param("k", float, 2.0, high=1.0),)),
            "param 'k' default: k=2.0 is above the maximum 1.0",
        ),
        (
            Method(
                "m",
                "d",
                _build_lenet,
                params=(Param("k", float, 0.0, sweep=(0, 5), high=1),),
            ),
            "param 'k' sweep: k=5.0 is above the maximum 1",
        ),
        (
            Method("m", "d", _build_lenet, params=(Param("k", list, []),)),
            "use int, float, bool or str",
        ),
        (
            Method(
                "m", "d", _build_lenet, params=(Param("k", int, 1), Param("k", int, 2))
            ),
            "param 'k' twice",
        ),
    ],
)
def test_bad_method_fields(method, expected):
    message = _load_error(_plugin(method))
    assert "plugin 'bad_plugin' (in-process)" in message
    assert expected in message


def test_hook_must_return_a_list_of_methods():
    class returns_one:
        @staticmethod
        @hookimpl
        def ood_bench_methods():
            return Method("m", "d", _build_lenet)

    assert "returned a Method, not a list" in _load_error(returns_one)
    assert "returned a str, not Method" in _load_error(_plugin("baseline"))


def test_hook_that_raises_is_named():
    class raises:
        @staticmethod
        @hookimpl
        def ood_bench_methods():
            raise RuntimeError("no GPU here")

    message = _load_error(raises)
    assert "plugin 'raises'" in message and "RuntimeError: no GPU here" in message


def test_duplicate_method_name_names_both_providers():
    message = _load_error(
        _plugin(Method("noise", "again", _build_lenet), name="copycat")
    )
    assert "plugin 'copycat' (in-process)" in message
    assert "plugin 'benchmark.plugins.noise' (ood-bench" in message


def test_model_with_the_wrong_output_shape():
    def five_logits(params):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5))

    registry = load_registry(
        outside=False, extra_plugins=[_plugin(Method("five", "d", five_logits))]
    )
    with pytest.raises(
        PluginError, match=r"to \[2, 5\]; it must give \[2,10\]"
    ) as info:
        validate_model(registry.get("five"), {})
    assert "method 'five' (in-process)" in str(info.value)


def test_model_builder_that_raises():
    def broken(params):
        raise KeyError("width")

    with pytest.raises(PluginError, match="build_model.*raised KeyError"):
        validate_model(Method("broken", "d", broken), {})


# --- the command line ---------------------------------------------------------


def test_methods_command_lists_builtins(capsys):
    assert main(["methods", "--no-outside-plugins"]) == 0
    out = capsys.readouterr().out
    for name in BUILTINS:
        assert name in out
    assert "ood-bench" in out and "fraction" in out


def test_check_command_passes_for_baseline(capsys):
    assert main(["check", "baseline", "--no-outside-plugins"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "FAIL" not in out


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "noize"],
        ["check", "noise", "--param", "fraction=2"],
        ["check", "noise", "--param", "fractoin=0.5"],
    ],
)
def test_check_command_bad_input_exits_2(capsys, argv):
    assert main([*argv, "--no-outside-plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ood-bench check: error:") and err.count("\n") == 1


def test_check_command_fails_a_random_evaluation(capsys, monkeypatch):
    class Jittery(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _build_lenet({})

        def forward(self, x):
            return self.net(x + 0.1 * torch.rand_like(x))

    plugin = _plugin(Method("jittery", "d", lambda params: Jittery()), name="jitter")
    monkeypatch.setattr(
        "benchmark.registry.load_registry",
        lambda **kwargs: load_registry(outside=False, extra_plugins=[plugin]),
    )
    assert main(["check", "jittery"]) == 1
    out = capsys.readouterr().out
    assert "FAIL evaluation" in out and "different logits" in out
