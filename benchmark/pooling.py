"""2x2 max pooling that matches ``nn.MaxPool2d(2)`` bit for bit, faster on CPU.

PyTorch's CPU kernel for channels-last max pooling vectorises across channels,
so a layer with few channels (LeNet-5's first has six) runs one scalar at a
time and the first pooling layer takes about a tenth of a LeNet-5 training
step on one thread. The loops here are compiled with numba and visit each 2x2
window in the order PyTorch does, keeping the first largest value (a NaN wins,
as there), so outputs and gradients are the same bits: swapping this module in
changes the speed of a run, never its numbers.

The loops run on one thread, which is how each ``ood-bench run`` worker trains
on CPU; with more intra-op threads PyTorch's own kernel splits the work and is
as fast, so it is used then. They also run only where PyTorch dispatches its
AVX-512 kernels: forward and backward through LeNet-5's pooling, they took
0.42 times PyTorch's time on a 2-core AVX-512 machine but 1.4 times on a
2-core AVX2 one, so elsewhere PyTorch's kernel serves. Inputs the loops
do not cover (other devices, dtypes or layouts, or tensors under ``torch.func``
transforms) go to ``F.max_pool2d`` as well.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)``: windows of 2x2, stride 2, no padding, floor mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _compiled_path_takes(x):
            return _MaxPool2x2.apply(x)
        return F.max_pool2d(x, 2)

    def extra_repr(self) -> str:
        return "kernel_size=2, stride=2"


def _compiled_path_takes(x: torch.Tensor) -> bool:
    """Whether ``x`` goes to the compiled loops: they run faster than
    PyTorch's kernel on this CPU (a cached answer, asked first) and cover it."""
    return _loops_faster_here() and _loops_cover(x)


def _loops_cover(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain 4-d float32 CPU tensor laid out channels-last,
    pooled with one intra-op thread."""
    return (
        not torch._C._functorch.is_functorch_wrapped_tensor(x)
        and x.device.type == "cpu"
        and torch.get_num_threads() == 1
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[-2] >= 2
        and x.shape[-1] >= 2
        # unambiguously channels-last, so the output takes that layout in
        # F.max_pool2d too, and the layers after see the same memory either way
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


@functools.cache
def _loops_faster_here() -> bool:
    """Whether PyTorch runs its AVX-512 kernels here, the kind of CPU on which
    the loops were measured faster than PyTorch's own max pooling."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _nhwc(t: torch.Tensor):
    """A channels-last tensor's memory as an (N, H, W, C) NumPy array, shared."""
    return t.detach().permute(0, 2, 3, 1).numpy()


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = torch.empty(
            (n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last
        )
        # which of a window's four places held its maximum, 0-3 in row order
        winner = torch.empty((n, h // 2, w // 2, c), dtype=torch.uint8)
        _kernels().forward(_nhwc(x), _nhwc(out), winner.numpy())
        ctx.save_for_backward(winner)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        (winner,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        grad = torch.empty((n, c, h, w), memory_format=torch.channels_last)
        if h % 2 or w % 2:
            grad.zero_()  # a cropped edge gets no gradient
        grad_nhwc = grad_out.permute(0, 2, 3, 1).contiguous().numpy()
        _kernels().backward(grad_nhwc, winner.numpy(), _nhwc(grad))
        return grad


@functools.cache
def _kernels():
    """Compile the loops on first use: numba takes a few tenths of a second to
    import and compiles once per machine (the result is cached on disk)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def forward(x, out, winner):
        n_, h2, w2, c_ = out.shape
        for n in range(n_):
            for i in range(h2):
                for j in range(w2):
                    for c in range(c_):
                        best = x[n, 2 * i, 2 * j, c]
                        k = 0
                        v = x[n, 2 * i, 2 * j + 1, c]
                        if v > best or math.isnan(v):
                            best = v
                            k = 1
                        v = x[n, 2 * i + 1, 2 * j, c]
                        if v > best or math.isnan(v):
                            best = v
                            k = 2
                        v = x[n, 2 * i + 1, 2 * j + 1, c]
                        if v > best or math.isnan(v):
                            best = v
                            k = 3
                        out[n, i, j, c] = best
                        winner[n, i, j, c] = k

    @numba.njit(cache=True, nogil=True)
    def backward(grad_out, winner, grad):
        n_, h2, w2, c_ = grad_out.shape
        zero = numba.float32(0.0)
        for n in range(n_):
            for i in range(h2):
                for j in range(w2):
                    for c in range(c_):
                        # PyTorch adds the gradient into zeros, which turns a
                        # -0.0 into +0.0; adding to zero here does the same
                        g = zero + grad_out[n, i, j, c]
                        k = winner[n, i, j, c]
                        grad[n, 2 * i, 2 * j, c] = g if k == 0 else zero
                        grad[n, 2 * i, 2 * j + 1, c] = g if k == 1 else zero
                        grad[n, 2 * i + 1, 2 * j, c] = g if k == 2 else zero
                        grad[n, 2 * i + 1, 2 * j + 1, c] = g if k == 3 else zero

    return _Kernels(forward, backward)


class _Kernels(NamedTuple):
    forward: Callable
    backward: Callable
