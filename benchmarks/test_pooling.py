"""LeNet-5's two max-pooling layers, forward and backward at one thread, through
the compiled loops and through PyTorch's kernel. ``MaxPool2x2`` takes the loops
only on CPUs where PyTorch runs its AVX-512 kernels; this benchmark shows, on
the machine at hand, whether that choice is the faster one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmark import pooling
from benchmarks.conftest import FIGURES

# LeNet-5's pooling inputs for a batch of 128: after conv1 and after conv2.
LAYERS = {"first": (128, 6, 28, 28), "second": (128, 16, 10, 10)}
KERNELS = {"compiled": pooling._MaxPool2x2.apply, "torch": lambda x: F.max_pool2d(x, 2)}


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_pooling_forward_and_backward(benchmark, quick, threads, layer, kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(LAYERS[layer], generator=g).contiguous(
        memory_format=torch.channels_last
    )
    x.requires_grad_()
    pool = KERNELS[kernel]
    # channels-last, as the gradient from the convolution after it is
    grad = torch.randn(pool(x).shape, generator=g).contiguous(
        memory_format=torch.channels_last
    )

    def step() -> None:
        x.grad = None
        pool(x).backward(grad)

    step()  # compile the loops, warm the allocator
    benchmark.pedantic(step, rounds=10 if quick else 50, iterations=5)
    taken = kernel == ("compiled" if pooling._loops_faster_here() else "torch")
    benchmark.extra_info["MaxPool2x2 takes this kernel here"] = taken
    name = f"{layer} pooling layer, fwd+bwd at 1 thread, {kernel}"
    name += ", the one MaxPool2x2 takes here" if taken else ""
    FIGURES[name + ", median (us)"] = (benchmark.stats.stats.median * 1e6, "us")
