"""tiny_mlp: a one-hidden-layer perceptron on raw pixels, as an outside method.

It shows everything an outside plugin needs: a model builder, its params and
the hook that hands the method to ood-bench. A weight penalty shows the
optional extra loss term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from benchmark import Method, Param, hookimpl


def build_model(params: dict) -> nn.Module:
    """Flatten the 3x32x32 image, one hidden ReLU layer, 10 logits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(3 * 32 * 32, params["hidden"]),
        nn.ReLU(),
        nn.Linear(params["hidden"], 10),
    )


def weight_penalty(
    model: nn.Module, x: Tensor, logits: Tensor, y: Tensor, params: dict
) -> Tensor:
    """``weight_decay`` times the squared norm of every weight."""
    squares = sum(p.pow(2).sum() for p in model.parameters())
    return params["weight_decay"] * torch.as_tensor(squares)


@hookimpl
def ood_bench_methods() -> list[Method]:
    return [
        Method(
            name="tiny_mlp",
            description="A one-hidden-layer perceptron on raw pixels.",
            build_model=build_model,
            extra_loss=weight_penalty,
            params=(
                Param("hidden", int, 64, sweep=(32, 128), low=1, high=4096),
                Param("weight_decay", float, 0.0, low=0.0, help="L2 penalty weight"),
            ),
        )
    ]
