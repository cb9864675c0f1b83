"""What a method plugin provides: a `Method` with its model, its `Param`s and hooks.

A method owns its model, an optional training transform and an optional extra
loss term. Everything else (data, seeding, optimizer, budget, evaluation and
storage) belongs to the harness, so that methods are compared on equal terms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is only needed by whoever calls the callables
    from torch import Generator, Tensor, nn

PARAM_TYPES = (int, float, bool, str)
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a method: its type, default, range and sweep.

    ``sweep`` lists the values the standard sweep tries; empty means the default
    only. ``low`` and ``high`` bound int and float values (inclusive); ``choices``
    restricts a value to a fixed set.
    """

    name: str
    type: type
    default: Any
    sweep: tuple = ()
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    help: str = ""

    def parse(self, text: str) -> Any:
        """Convert a value written on the command line, then validate it."""
        text = text.strip()
        if self.type is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(f"{self.name}={text!r} is not true or false")
        if self.type in (int, float):
            try:
                value = self.type(text)
            except ValueError:
                kind = "an integer" if self.type is int else "a number"
                raise ValueError(f"{self.name}={text!r} is not {kind}") from None
            return self.validate(value)
        return self.validate(text)

    def validate(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise ValueError saying why."""
        value = self._coerce(value)
        if self.low is not None and value < self.low:
            raise ValueError(f"{self.name}={value!r} is below the minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{self.name}={value!r} is above the maximum {self.high}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"{self.name}={value!r} is not one of {allowed}")
        return value

    def _coerce(self, value: Any) -> Any:
        # bool is a subclass of int, so it is refused explicitly for numbers.
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type is float and is_number and math.isfinite(value):
            return float(value)
        if self.type is int and isinstance(value, int) and is_number:
            return value
        if self.type in (bool, str) and type(value) is self.type:
            return value
        expected = "a finite float" if self.type is float else self.type.__name__
        got = type(value).__name__
        raise ValueError(f"{self.name}={value!r} is a {got}, expected {expected}")

    def check(self) -> None:
        """Raise ValueError or TypeError if the definition itself is wrong."""
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"param name {self.name!r} is not a valid identifier")
        if self.type not in PARAM_TYPES:
            raise ValueError(
                f"param {self.name!r} has type {self.type!r}; "
                "use int, float, bool or str"
            )
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(
                f"param {self.name!r} has low {self.low} > high {self.high}"
            )
        if not isinstance(self.sweep, tuple):
            raise TypeError(f"param {self.name!r} sweep must be a tuple")
        if self.choices is not None and not isinstance(self.choices, tuple):
            raise TypeError(f"param {self.name!r} choices must be a tuple or None")
        try:
            self.validate(self.default)
        except ValueError as exc:
            raise ValueError(f"param {self.name!r} default: {exc}") from None
        for value in self.sweep:
            try:
                self.validate(value)
            except ValueError as exc:
                raise ValueError(f"param {self.name!r} sweep: {exc}") from None

    def describe_range(self) -> str:
        """The allowed values in words, e.g. ``[0, 1]`` or ``'a' | 'b'``; '' if any."""
        if self.choices is not None:
            return " | ".join(repr(c) for c in self.choices)
        if self.low is None and self.high is None:
            return ""
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"[{low}, {high}]"


@dataclass(frozen=True)
class Method:
    """A method to benchmark: how to build its model and how it changes training.

    ``build_model(params)`` returns a module mapping [N,3,32,32] images in [0,1]
    to [N,10] logits. ``train_transform(x, params, generator)`` is applied to
    training batches only, and draws its randomness only from ``generator``.
    ``extra_loss(model, x, logits, y, params)`` returns a scalar added to the
    cross-entropy; ``x`` is the batch the model saw (after the transform).
    """

    name: str
    description: str
    build_model: Callable[[dict], nn.Module]
    params: tuple[Param, ...] = ()
    train_transform: Callable[[Tensor, dict, Generator], Tensor] | None = None
    extra_loss: Callable[[nn.Module, Tensor, Tensor, Tensor, dict], Tensor] | None = (
        None
    )

    def defaults(self) -> dict:
        """Every parameter at its default value."""
        return {p.name: p.default for p in self.params}

    def sweep_grid(self) -> list[dict]:
        """The standard sweep: every combination of the params' sweep values.

        A param with an empty sweep stays at its default; a method without
        params has one configuration, ``{}``.
        """
        names = [p.name for p in self.params]
        axes = [p.sweep or (p.default,) for p in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*axes)]

    def param(self, name: str) -> Param:
        """The param called ``name``; KeyError if there is none."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check(self) -> None:
        """Raise TypeError or ValueError at the first field that breaks the contract."""
        for field in ("name", "description"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Method.{field} must be a non-empty string")
        if any(ch.isspace() for ch in self.name):
            raise ValueError(f"method name {self.name!r} contains whitespace")
        if not callable(self.build_model):
            raise TypeError(f"method {self.name!r}: build_model is not callable")
        for field in ("train_transform", "extra_loss"):
            hook = getattr(self, field)
            if hook is not None and not callable(hook):
                raise TypeError(f"method {self.name!r}: {field} is not callable")
        if not isinstance(self.params, tuple):
            raise TypeError(f"method {self.name!r}: params must be a tuple of Param")
        seen = set()
        for p in self.params:
            if not isinstance(p, Param):
                raise TypeError(
                    f"method {self.name!r}: params holds a {type(p).__name__}, "
                    "not a Param"
                )
            if p.name in seen:
                raise ValueError(f"method {self.name!r}: param {p.name!r} twice")
            seen.add(p.name)
            p.check()
