"""MaxPool2x2 gives the bits nn.MaxPool2d(2) gives, forward and backward, and the
built-in models train to the bits of their plain torch form. The compiled loops
are tested on every CPU, including those on which MaxPool2x2 leaves them out."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmark import engine, pooling
from benchmark.pooling import MaxPool2x2, _compiled_path_takes, _loops_cover
from benchmark.protocol import STANDARD

CL = torch.channels_last


@pytest.fixture
def loops_on_any_cpu(monkeypatch):
    """MaxPool2x2 takes the compiled loops for every input they cover, on CPUs
    where it would otherwise leave them to PyTorch's kernel."""
    monkeypatch.setattr(pooling, "_loops_faster_here", lambda: True)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns, so that -0.0 and +0.0 differ and NaNs compare."""
    as_int = torch.int64 if t.dtype == torch.float64 else torch.int32
    return t.contiguous().view(as_int)


def awkward_input(shape, seed: int) -> torch.Tensor:
    """Values with what decides a max pool's choices: ties (zeros, as after
    a ReLU, and repeated positive values), signed zeros, NaN and infinities."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    pool = torch.tensor(
        [0.0, -0.0, 0.5, 0.5, float("nan"), float("inf"), -float("inf")]
    )
    choice = torch.randint(0, len(pool), shape, generator=g)
    use_pool = torch.rand(shape, generator=g) < 0.4
    return torch.where(use_pool, pool[choice], x)


def pool_both(x: torch.Tensor, grad_seed: int, ours=None):
    """Output and input gradient from ``ours`` (MaxPool2x2 unless given) and
    from F.max_pool2d."""
    results = []
    for pool in (ours or MaxPool2x2(), nn.MaxPool2d(2)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        g = torch.Generator().manual_seed(grad_seed)
        grad = torch.randn(out.shape, generator=g)
        grad[torch.rand(out.shape, generator=g) < 0.3] = -0.0
        out.backward(grad)
        results.append((out, leaf.grad))
    return results


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    h=st.integers(2, 13),
    w=st.integers(2, 13),
    seed=st.integers(0, 2**16),
)
def test_compiled_pooling_matches_torch_bit_for_bit(n, c, h, w, seed):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = awkward_input((n, c, h, w), seed).contiguous(memory_format=CL)
        if x.is_contiguous():  # c == 1 or h == w == 1: not telling layouts apart
            assert not _loops_cover(x)
            return
        assert _loops_cover(x)
        loops = pooling._MaxPool2x2.apply
        (ours, our_grad), (theirs, their_grad) = pool_both(x, seed + 1, loops)
    finally:
        torch.set_num_threads(before)

    assert torch.equal(bits(ours), bits(theirs))
    assert ours.stride() == theirs.stride()
    assert torch.equal(bits(our_grad), bits(their_grad))
    assert our_grad.stride() == their_grad.stride()


@pytest.mark.parametrize(
    "case", ["contiguous layout", "float64", "two threads", "under vmap"]
)
def test_inputs_the_loops_do_not_cover_go_to_torch(loops_on_any_cpu, one_thread, case):
    x = awkward_input((2, 6, 8, 8), seed=3).contiguous(memory_format=CL)
    if case == "contiguous layout":
        x = x.contiguous()
    if case == "float64":
        x = x.double()
    if case == "two threads":
        torch.set_num_threads(2)
    if case == "under vmap":
        stacked = torch.stack([x, x.flip(-1).contiguous(memory_format=CL)])
        ours = torch.vmap(MaxPool2x2())(stacked)
        assert torch.equal(bits(ours), bits(torch.vmap(nn.MaxPool2d(2))(stacked)))
        return

    assert not _compiled_path_takes(x)
    (ours, our_grad), (theirs, their_grad) = pool_both(x, 4)
    assert torch.equal(bits(ours), bits(theirs))
    assert torch.equal(bits(our_grad), bits(their_grad))


def test_no_grad_pooling_gives_the_same_values(loops_on_any_cpu, one_thread):
    x = awkward_input((4, 6, 28, 28), seed=5).contiguous(memory_format=CL)
    with torch.no_grad():
        assert torch.equal(bits(MaxPool2x2()(x)), bits(F.max_pool2d(x, 2)))


@pytest.mark.realdata
@pytest.mark.parametrize("name, params", [("baseline", {}), ("masker", {"c": -1.0})])
def test_training_on_real_data_ends_with_the_weights_torch_pooling_gives(
    real_workspace, loops_on_any_cpu, one_thread, name, params
):
    """A built-in model trains on a real split to the bits its plain torch form
    (nn.MaxPool2d, ReLU not in place) gives, so the faster form leaves results
    stored before it valid."""
    method = real_workspace.registry.get(name)

    def with_torch_pooling(p: dict) -> nn.Module:
        model = method.build_model(p)
        for module in model.modules():
            for child_name, child in module.named_children():
                if isinstance(child, MaxPool2x2):
                    setattr(module, child_name, nn.MaxPool2d(2))
                if isinstance(child, nn.ReLU):
                    setattr(module, child_name, nn.ReLU())
        return model

    reference = dataclasses.replace(method, build_model=with_torch_pooling)
    cell = real_workspace.splits(STANDARD, "black", 16, 0)
    split = engine.cell_tensors(cell, real_workspace.bank)["train"]
    budget, steps = STANDARD.budget, 12
    ours = engine.train(method, params, split, budget, seed=0, max_steps=steps)
    theirs = engine.train(reference, params, split, budget, seed=0, max_steps=steps)

    assert any(isinstance(m, MaxPool2x2) for m in ours.model.modules())
    assert not any(isinstance(m, MaxPool2x2) for m in theirs.model.modules())
    assert not any(getattr(m, "inplace", False) for m in theirs.model.modules())
    assert ours.final_loss == theirs.final_loss
    reference_weights = theirs.model.state_dict()
    for key, value in ours.model.state_dict().items():
        assert torch.equal(bits(value), bits(reference_weights[key])), key


def test_loops_serve_only_cpus_with_avx512_kernels(one_thread):
    """Where PyTorch runs its AVX2 kernels, its own max pooling was the faster."""
    x = awkward_input((2, 6, 8, 8), seed=6).contiguous(memory_format=CL)
    assert _loops_cover(x)
    capability = torch.backends.cpu.get_cpu_capability()
    assert _compiled_path_takes(x) == capability.startswith("AVX512")
