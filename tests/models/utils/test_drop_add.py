"""Stochastic depth's residual sum in one pass each way (``drop_add.py``): the same bits as the
ATen form (``index_add`` of the cast branch, and its backward) for some, all and one kept
samples, with and without autograd, where it applies, the kernels' refusals by name, and a bf16
training step of the fast path with drop path: the same gradients with and without it.

On CPUs without AVX-512 BF16 these skip (the ATen form runs there).
"""

import pytest
import torch

from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import drop_add as da

from .test_amx_attention import training_grads
from .test_cpu_kernels import kernels_on, needs_kernels, spy_kernels

__all__ = ['kernels_on']  # the fixture, imported for these tests


def _sum_and_grads(identity, branch, kept, alpha, grad):
    out = da.drop_add(identity, branch, kept, alpha)
    return (out, *torch.autograd.grad(out, (identity, branch), grad))


@needs_kernels
@pytest.mark.parametrize(
    'batch, kept, shape',
    [
        (6, [0, 2, 5], (198, 24)),  # some kept
        (4, None, (7, 3)),  # every sample (no index)
        (3, [1], (5,)),  # one; a sample of 5 elements: masked tails
        (5, [4, 0, 3], (2, 17)),  # not in order
    ],
    ids=str,
)
def test_the_same_bits_as_atens_form(kernels_on, monkeypatch, batch, kept, shape):
    torch.manual_seed(batch)
    identity = torch.randn(batch, *shape, requires_grad=True)
    kept = None if kept is None else torch.tensor(kept)
    branch = torch.randn(batch if kept is None else kept.numel(), *shape).bfloat16()
    branch.requires_grad_()
    grad = torch.randn(batch, *shape)
    ran = spy_kernels(monkeypatch)
    got = _sum_and_grads(identity, branch, kept, 1 / 0.9, grad)
    assert ran == ['drop_add_bf16', 'scaled_rows_bf16']
    assert got[0].grad_fn.name() == 'DropAddBackward'
    monkeypatch.setattr(da, 'USE_DROP_ADD', False)
    want = _sum_and_grads(identity, branch, kept, 1 / 0.9, grad)
    assert len(ran) == 2  # no kernel
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    assert got[1] is grad or torch.equal(got[1], grad)  # the stream's gradient passed on
    monkeypatch.setattr(da, 'USE_DROP_ADD', True)
    with torch.no_grad():
        assert torch.equal(da.drop_add(identity, branch, kept, 1 / 0.9), want[0])


@needs_kernels
def test_where_it_applies(kernels_on, monkeypatch):
    identity, branch = torch.randn(4, 5, 8), torch.randn(2, 5, 8).bfloat16()
    assert da.drop_add_applies(identity, branch)
    assert not da.drop_add_applies(identity, branch.float())  # fp32 training: ATen's
    assert not da.drop_add_applies(identity.bfloat16(), branch)
    assert not da.drop_add_applies(identity.transpose(1, 2), branch.transpose(1, 2))
    assert not da.drop_add_applies(identity, torch.randn(2, 5, 9).bfloat16())
    monkeypatch.setattr(da, 'USE_DROP_ADD', False)
    assert not da.drop_add_applies(identity, branch)
    monkeypatch.setattr(da, 'USE_DROP_ADD', True)
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    assert not da.drop_add_applies(identity, branch)
    kept = torch.tensor([1, 3])
    want = identity.index_add(0, kept, branch.float(), alpha=2.0)
    assert torch.equal(da.drop_add(identity, branch, kept, 2.0), want)  # ATen's form


@needs_kernels
def test_the_kernels_refuse_wrong_tensors_by_name(kernels_on):
    built = cpu_kernels.kernels()
    identity, branch, kept = torch.randn(4, 6), torch.randn(2, 6).bfloat16(), torch.tensor([0, 3])
    built.drop_add_bf16(identity, branch, kept, 1.0)
    for args, match in (
        ((identity.double(), branch, kept), 'drop_add_bf16: a contiguous fp32 identity and bf16'),
        ((identity, branch.float(), kept), 'drop_add_bf16: a contiguous fp32 identity and bf16'),
        (
            (identity, branch[:, :5].contiguous(), kept),
            r'identity \(B, ...\) and branch \(b, ...\) of one',
        ),
        ((identity, branch, kept.int()), 'drop_add_bf16: kept a 1-D int64 tensor'),
        ((identity, branch, torch.tensor([0])), 'drop_add_bf16: kept a 1-D int64 tensor'),
        ((identity, branch, torch.tensor([0, 4])), 'kept samples distinct and within the batch'),
        ((identity, branch, torch.tensor([1, 1])), 'kept samples distinct and within the batch'),
        ((identity, branch, None), 'without kept, the branch has every sample'),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.drop_add_bf16(*args, 1.0)
    for args, match in (
        ((identity.bfloat16(), kept), 'scaled_rows_bf16: a contiguous fp32 grad'),
        ((identity, torch.tensor([5])), 'scaled_rows_bf16: kept samples distinct and within'),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.scaled_rows_bf16(*args, 1.0)


@needs_kernels
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
def test_training_step_with_it_is_the_step_without(kernels_on, monkeypatch, out_type):
    """A bf16 autocast training step of the fast path with drop path 0.5 (samples dropped in
    both layers): the kernels ran, every parameter's gradient the same bits without them."""
    x = torch.randn(6, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got = training_grads(x, out_type, 0.5)
    assert ran.count('drop_add_bf16') == ran.count('scaled_rows_bf16') > 0
    monkeypatch.setattr(da, 'USE_DROP_ADD', False)
    ran.clear()
    want = training_grads(x, out_type, 0.5)
    assert 'drop_add_bf16' not in ran
    assert got.keys() == want.keys()
    for name, g in got.items():
        assert torch.equal(g, want[name]), name
