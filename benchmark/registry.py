"""Finds method plugins, validates them before any training, and looks methods up.

Built-in methods are the modules of the ``benchmark.plugins`` package (one file
each, found with pkgutil). Outside methods come from installed distributions
that declare an entry point in the ``ood_bench`` group, or from importable
modules named in the environment variable OOD_BENCH_PLUGINS. Every mistake a plugin
can make is reported as one `PluginError` line naming the plugin, the
distribution that provides it and what is wrong.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import pkgutil
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy
import torch

import benchmark.plugins
from benchmark import __version__, hookspec
from benchmark.errors import PluginError
from benchmark.method import Method
from benchmark.protocol import did_you_mean

log = logging.getLogger(__name__)

GROUP = hookspec.PROJECT  # the entry-point group outside plugins declare
DISABLE_ENV = "OOD_BENCH_DISABLE_PLUGINS"
PLUGINS_ENV = "OOD_BENCH_PLUGINS"  # modules to load as plugins without installing them
BUILTIN_SOURCE = f"ood-bench {__version__}"
IN_PROCESS_SOURCE = "in-process"

# Who provides each loaded Method, so `validate_model` can name them without
# being handed the registry.
_providers: weakref.WeakKeyDictionary[Method, str] = weakref.WeakKeyDictionary()


@dataclass
class Registry:
    """Every loaded method by name, with the distribution that provides it."""

    methods: dict[str, Method]
    sources: dict[str, str] = field(default_factory=dict)
    plugins: dict[str, str] = field(default_factory=dict)
    manager: pluggy.PluginManager | None = None

    def get(self, name: str) -> Method:
        """The method called ``name``; a PluginError with the closest names if none."""
        try:
            return self.methods[name]
        except KeyError:
            raise PluginError(
                f"unknown method {name!r}{did_you_mean(name, self.methods)}; "
                "run `ood-bench methods` to list them"
            ) from None

    def source(self, name: str) -> str:
        """The distribution and version providing a method, e.g. ``ood-bench 0.1.0``."""
        self.get(name)
        return self.sources[name]

    def parse_params(
        self, method: Method | str, overrides: Sequence[str]
    ) -> list[dict]:
        """The configurations to run, from ``KEY=V1,V2`` overrides.

        With no overrides, this is the method's standard sweep
        (`Method.sweep_grid`). With overrides, it is the grid over the given
        values, and every param not given stays at its default. Every value is
        converted and validated; a mistake is a one-line PluginError.
        """
        if isinstance(method, str):
            method = self.get(method)
        if not overrides:
            return method.sweep_grid()

        where = f"method {method.name!r} ({self.sources.get(method.name, '?')})"
        names = [p.name for p in method.params]
        given: dict[str, list] = {}
        for text in overrides:
            key, sep, values = text.partition("=")
            key = key.strip()
            if not sep or not key or not values.strip():
                raise PluginError(f"{where}: --param {text!r} is not KEY=V1,V2,...")
            if key not in names:
                known = ", ".join(names) if names else "none"
                raise PluginError(
                    f"{where}: unknown param {key!r}{did_you_mean(key, names)}; "
                    f"its params: {known}"
                )
            if key in given:
                raise PluginError(f"{where}: --param {key} given twice")
            param = method.param(key)
            try:
                given[key] = [param.parse(v) for v in values.split(",")]
            except ValueError as exc:
                raise PluginError(f"{where}: --param {exc}") from None

        axes = [given.get(p.name, [p.default]) for p in method.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*axes)]


def load_registry(
    disable: Iterable[str] = (),
    outside: bool = True,
    extra_plugins: Iterable[object] = (),
) -> Registry:
    """Load, validate and index every method plugin.

    ``disable`` names outside plugins to skip, by entry-point name or by
    distribution name; so does the comma-separated environment variable
    OOD_BENCH_DISABLE_PLUGINS, where ``all`` skips every outside plugin, as
    ``outside=False`` does. The modules named in OOD_BENCH_PLUGINS
    (comma-separated, importable from ``sys.path``) are outside plugins too.
    ``extra_plugins`` are registered as they are (for tests and embedding).
    Raises PluginError on the first broken plugin.
    """
    disabled = {d.strip() for d in disable if d.strip()}
    disabled |= {d.strip() for d in os.environ.get(DISABLE_ENV, "").split(",")}
    disabled.discard("")
    if "all" in disabled:
        outside = False

    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspec)
    sources: dict[str, str] = {}  # plugin name -> distribution

    for module_name in _builtin_modules():
        module = importlib.import_module(module_name)
        _register(pm, module, module_name, BUILTIN_SOURCE)
        sources[module_name] = BUILTIN_SOURCE
    for i, plugin in enumerate(extra_plugins):
        name = getattr(plugin, "__name__", None) or f"extra-{i}"
        _register(pm, plugin, name, IN_PROCESS_SOURCE)
        sources[name] = IN_PROCESS_SOURCE
    if outside:
        sources.update(_load_outside(pm, disabled))
        sources.update(_load_env_modules(pm, disabled))

    for name, plugin in pm.list_name_plugin():
        _check_hook_names(pm, plugin, _label(name, sources.get(name, "?")))
    return _collect_methods(pm, sources)


def validate_model(method: Method, params: dict) -> None:
    """Build the model and check a [2,3,32,32] zeros batch gives [2,10] logits.

    Raises PluginError naming the method and its distribution. The global torch
    random state is left as it was, so seeding done before this call still holds.
    """
    where = f"method {method.name!r} ({_providers.get(method, IN_PROCESS_SOURCE)})"
    with torch.random.fork_rng(devices=[]):
        try:
            model = method.build_model(dict(params))
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported
            raise PluginError(f"{where}: build_model({params}) raised {_brief(exc)}")
        if not isinstance(model, torch.nn.Module):
            got = type(model).__name__
            raise PluginError(f"{where}: build_model returned a {got}, not nn.Module")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                logits = model(torch.zeros(2, 3, 32, 32))
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported
            raise PluginError(f"{where}: the model raised {_brief(exc)} on [2,3,32,32]")
        finally:
            model.train(was_training)
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
    if shape != (2, 10):
        got = list(shape) if shape is not None else type(logits).__name__
        raise PluginError(
            f"{where}: the model maps [2,3,32,32] to {got}; it must give [2,10] logits"
        )


def _builtin_modules() -> list[str]:
    found = pkgutil.iter_modules(benchmark.plugins.__path__)
    names = sorted(info.name for info in found if not info.name.startswith("_"))
    return [f"{benchmark.plugins.__name__}.{name}" for name in names]


def _label(plugin_name: str, source: str) -> str:
    return f"plugin {plugin_name!r} ({source})"


def _brief(exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def _register(pm: pluggy.PluginManager, plugin: object, name: str, source: str) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{_label(name, source)}: {_hookimpl_mistake(exc)}") from None
    except ValueError as exc:  # pluggy: the same plugin or name registered twice
        raise PluginError(f"{_label(name, source)}: {exc}") from None


def _hookimpl_mistake(exc: pluggy.PluginValidationError) -> str:
    # pluggy's message spans lines; its last line says what is wrong and the
    # second shows the offending definition.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) >= 3:
        return f"{lines[1]}: {lines[-1]}"
    return " ".join(lines)


def _load_outside(pm: pluggy.PluginManager, disabled: set[str]) -> dict[str, str]:
    """Load each ``ood_bench`` entry point not disabled; return plugin -> source."""
    sources = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        source = f"{dist_name} {dist.version}" if dist is not None else "?"
        if ep.name in disabled or _normalise(dist_name) in map(_normalise, disabled):
            log.info("outside plugin %s (%s) is disabled", ep.name, source)
            continue
        hint = f"skip it with --disable {ep.name} or {DISABLE_ENV}={ep.name}"
        try:
            pm.load_setuptools_entrypoints(GROUP, name=ep.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"{_label(ep.name, source)}: {_hookimpl_mistake(exc)}; {hint}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - an import error, say whose
            raise PluginError(
                f"{_label(ep.name, source)}: could not be loaded, {_brief(exc)}; {hint}"
            ) from None
        sources[ep.name] = source
    return sources


def env_plugin_modules() -> tuple[str, ...]:
    """The module names listed in OOD_BENCH_PLUGINS, in order, without repeats."""
    names = (name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def _load_env_modules(pm: pluggy.PluginManager, disabled: set[str]) -> dict[str, str]:
    """Import and register each module named in OOD_BENCH_PLUGINS not disabled."""
    sources = {}
    for module_name in env_plugin_modules():
        source = f"{PLUGINS_ENV}={module_name}"
        if module_name in disabled:
            log.info("plugin module %s is disabled", module_name)
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - an import error, say whose
            raise PluginError(
                f"{_label(module_name, source)}: could not be imported, "
                f"{_brief(exc)}; fix the name or remove it from {PLUGINS_ENV}"
            ) from None
        # The same module may also come in as an extra plugin (a worker given
        # the run's module list); registering it twice would be an error.
        if pm.is_registered(module):
            continue
        _register(pm, module, module_name, source)
        sources[module_name] = source
    return sources


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


def _check_hook_names(pm: pluggy.PluginManager, plugin: object, label: str) -> None:
    """Refuse ``ood_bench_*`` names that are not hooks, or hooks not marked."""
    # pm.hook also holds callers pluggy made for unknown marked names; only
    # those with a spec are real hooks.
    hooks = [
        name
        for name in dir(pm.hook)
        if name.startswith(GROUP + "_") and getattr(pm.hook, name).spec is not None
    ]
    for attr in dir(plugin):
        if not attr.startswith(GROUP + "_") or attr == GROUP + "_impl":
            continue
        if attr not in hooks:
            raise PluginError(
                f"{label}: {attr!r} is not a hook{did_you_mean(attr, hooks)}; "
                f"the hooks are: {', '.join(hooks)}"
            )
        if pm.parse_hookimpl_opts(plugin, attr) is None:
            raise PluginError(
                f"{label}: {attr} is not marked with @hookimpl, so it would be ignored"
            )


def _collect_methods(pm: pluggy.PluginManager, sources: dict[str, str]) -> Registry:
    methods: dict[str, Method] = {}
    method_sources: dict[str, str] = {}
    providers: dict[str, str] = {}

    # Calling each implementation on its own lets an error name its plugin.
    for impl in pm.hook.ood_bench_methods.get_hookimpls():
        source = sources.get(impl.plugin_name, "?")
        label = _label(impl.plugin_name, source)
        try:
            provided = impl.function()
        except Exception as exc:  # noqa: BLE001 - any plugin failure is reported
            raise PluginError(
                f"{label}: ood_bench_methods raised {_brief(exc)}"
            ) from None
        if not isinstance(provided, (list, tuple)):
            got = type(provided).__name__
            raise PluginError(
                f"{label}: ood_bench_methods returned a {got}, not a list"
            )

        for method in provided:
            if not isinstance(method, Method):
                got = type(method).__name__
                raise PluginError(
                    f"{label}: ood_bench_methods returned a {got}, not Method"
                )
            try:
                method.check()
            except (TypeError, ValueError) as exc:
                raise PluginError(f"{label}: {exc}") from None
            if method.name in methods:
                first = _label(providers[method.name], method_sources[method.name])
                raise PluginError(
                    f"{label}: method name {method.name!r} is already provided by "
                    f"{first}; rename one of them or disable a plugin"
                )
            methods[method.name] = method
            method_sources[method.name] = source
            providers[method.name] = impl.plugin_name
            _providers[method] = source

    return Registry(methods, method_sources, providers, pm)
