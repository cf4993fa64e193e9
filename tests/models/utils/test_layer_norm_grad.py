"""The pre-norms of bf16 autocast training (``layer_norm_grad.py``): the forward is the
inference kernel's (LayerNorm rounded to bf16) with each row's mean and 1/std, the backward
from the bf16 gradient is ATen's within fp32 rounding and near the exact one, where it applies,
the C++ refusals, and bf16 training steps of the fast path running it in every pre-norm with
gradients on every parameter, close to the steps with autocast's LayerNorm.

On CPUs without AVX-512 BF16 these skip (autocast's LayerNorm runs there).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import layer_norm_grad as lng

from .test_amx_attention import assert_grads_close, training_grads
from .test_cpu_kernels import kernels_on, needs_kernels, spy_kernels

__all__ = ['kernels_on']  # the fixture, imported for these tests


def _norm(c: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(c, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return norm


def _atens(x: torch.Tensor, norm: nn.LayerNorm, grad: torch.Tensor):
    """autocast's pre-norm: LayerNorm in fp32 and the cast; its output and the gradients."""
    x = x.detach().requires_grad_()
    norm.zero_grad(set_to_none=True)
    out = norm(x).bfloat16()
    out.backward(grad)
    return out, x.grad, norm.weight.grad, norm.bias.grad


def _exact(x: torch.Tensor, norm: nn.LayerNorm, grad: torch.Tensor):
    x = x.detach().double().requires_grad_()
    w, b = (p.detach().double().requires_grad_() for p in (norm.weight, norm.bias))
    F.layer_norm(x, x.shape[-1:], w, b, norm.eps).backward(grad.double())
    return x.grad, w.grad, b.grad


@needs_kernels
@pytest.mark.parametrize('c', [16, 24, 100, 384, 1024])
@pytest.mark.parametrize('rows', [1, 7, 300])
def test_gradients_are_atens_within_fp32(kernels_on, monkeypatch, c, rows):
    torch.manual_seed(c + rows)
    norm = _norm(c)
    x = torch.randn(rows, c) * 3 + 1
    grad = torch.randn(rows, c).bfloat16()
    ran = spy_kernels(monkeypatch)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert lng.applies(x, norm)
        xg = x.clone().requires_grad_()
        norm.zero_grad(set_to_none=True)
        out = lng.pre_norm(norm, xg)
    out.backward(grad)
    got = (xg.grad, norm.weight.grad, norm.bias.grad)
    assert ran == ['layer_norm_bf16', 'layer_norm_backward_bf16']
    assert out.grad_fn.name() == 'TrainLayerNormBackward' and out.dtype == torch.bfloat16
    want_out, *want = _atens(x, norm, grad)
    # the inference kernel's rounding (test_cpu_kernels.py): a bf16 unit, more near 0
    atol = 2**-8 * want_out.float().abs().max().item()
    torch.testing.assert_close(out.float(), want_out.float(), rtol=2**-7, atol=atol)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(out, cpu_kernels.layer_norm_bf16(x, norm))  # its bits
    exact = _exact(x, norm, grad)
    for name, g, w, e in zip(('dx', 'dw', 'db'), got, want, exact):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        scale = e.abs().max().item()
        assert (g - w).abs().max().item() <= 1e-5 * scale, name  # fp32 sums in another order
        assert (g.double() - e).abs().max().item() <= 2e-5 * scale, name


@needs_kernels
def test_stats_are_the_rows_mean_and_inverse_std(kernels_on):
    torch.manual_seed(0)
    x = torch.randn(5, 7, 100) * 2 + 3
    norm = _norm(100)
    stats = torch.empty(35, 2)
    built = cpu_kernels.kernels()
    out = built.layer_norm_bf16(x, norm.weight, norm.bias, norm.eps, stats)
    assert torch.equal(out, built.layer_norm_bf16(x, norm.weight, norm.bias, norm.eps))
    var, mean = torch.var_mean(x.double().reshape(35, 100), dim=-1, unbiased=False)
    torch.testing.assert_close(stats[:, 0].double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats[:, 1].double(), (var + norm.eps).rsqrt(), rtol=1e-5, atol=0)


@needs_kernels
def test_the_kernels_refuse_wrong_tensors(kernels_on):
    built = cpu_kernels.kernels()
    x, norm = torch.randn(6, 32), _norm(32)
    w, b = norm.weight.detach(), norm.bias.detach()
    for bad in (torch.empty(6, 3), torch.empty(5, 2), torch.empty(6, 2).double()):
        with pytest.raises(RuntimeError, match=r'stats a contiguous fp32 \(rows, 2\) tensor'):
            built.layer_norm_bf16(x, w, b, 1e-6, bad)
    stats, grad = torch.empty(6, 2), torch.randn(6, 32).bfloat16()
    for args, match in (
        ((grad.float(), x, stats, w), 'a contiguous bf16 grad and fp32 x of one shape'),
        ((grad[:5], x, stats, w), 'a contiguous bf16 grad and fp32 x of one shape'),
        ((grad.t(), x.t(), stats, w), 'a contiguous bf16 grad and fp32 x of one shape'),
        ((grad, x, stats[:5], w), r'stats a contiguous fp32 \(rows, 2\) tensor'),
        ((grad, x, stats, w[:31]), "a contiguous fp32 weight of the last dim's size"),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.layer_norm_backward_bf16(*args)


@needs_kernels
def test_where_it_applies(kernels_on, monkeypatch):
    norm, x = _norm(24), torch.randn(2, 5, 24)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert lng.applies(x, norm)
        with torch.no_grad():  # inference: cpu_kernels.pre_norm's kernel
            assert not lng.applies(x, norm)
            assert lng.pre_norm(norm, x).dtype == torch.bfloat16
        assert not lng.applies(x.bfloat16(), norm)
        assert not lng.applies(x.transpose(0, 1), norm)
        assert not lng.applies(x, nn.LayerNorm(24, elementwise_affine=False))
        assert not lng.applies(x, nn.LayerNorm(24).bfloat16())
        assert not lng.applies(x, nn.GroupNorm(1, 24))
        assert not lng.applies(torch.randn(2, cpu_kernels.MAX_ROW + 1), nn.LayerNorm(1025))
        hooked = _norm(24)
        hooked.register_forward_pre_hook(lambda *args: None)
        assert not lng.applies(x, hooked)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
        assert not lng.applies(x, norm)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
        monkeypatch.setattr(lng, 'USE_LAYER_NORM_GRAD', False)
        assert not lng.applies(x, norm)
        assert lng.pre_norm(norm, x).dtype == torch.float32  # autocast's LayerNorm
    monkeypatch.setattr(lng, 'USE_LAYER_NORM_GRAD', True)
    assert not lng.applies(x, norm)  # no autocast
    with torch.autocast('cpu', dtype=torch.float16):
        assert not lng.applies(x, norm)


@needs_kernels
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('drop_path_rate', [0.0, 0.1])
def test_training_step_with_it_is_the_step_without_within_bf16(
    kernels_on, monkeypatch, out_type, drop_path_rate
):
    """A bf16 autocast training step of the fast path (drop path 0.1: dropped samples skipped):
    the kernels in both pre-norms of every layer, gradients on every parameter, close to the
    step with autocast's LayerNorm."""

    x = torch.randn(4, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got = training_grads(x, out_type, drop_path_rate)
    assert ran.count('layer_norm_backward_bf16') == 4  # 2 layers, 2 pre-norms each
    monkeypatch.setattr(lng, 'USE_LAYER_NORM_GRAD', False)
    ran.clear()
    want = training_grads(x, out_type, drop_path_rate)
    assert 'layer_norm_backward_bf16' not in ran
    assert_grads_close(got, want)


@needs_kernels
@pytest.mark.parametrize('kept', [[0, 2, 3], [1], [3, 0]], ids=str)
def test_kept_samples_read_where_they_are(kernels_on, monkeypatch, kept):
    """``pre_norm(norm, x, kept)``: the norm of ``x[kept]`` and its gradients bit for bit, dx
    zero for the dropped samples, without the gathered copy."""
    torch.manual_seed(len(kept))
    norm, x = _norm(40), torch.randn(4, 7, 40, requires_grad=True)
    kept = torch.tensor(kept)
    grad = torch.randn(len(kept), 7, 40).bfloat16()
    results = []
    for gather in (False, True):
        norm.zero_grad(set_to_none=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            if gather:
                out = lng.pre_norm(norm, x.index_select(0, kept))
            else:
                ran = spy_kernels(monkeypatch)
                out = lng.pre_norm(norm, x, kept)
                assert ran == ['layer_norm_bf16'] and out.shape == (len(kept), 7, 40)
        (dx,) = torch.autograd.grad(out, x, grad, retain_graph=True)
        out.backward(grad)
        results.append((out, dx, norm.weight.grad, norm.bias.grad))
    for g, w in zip(*results):
        assert torch.equal(g, w)
    dropped = [i for i in range(4) if i not in kept.tolist()]
    assert not results[0][1][dropped].any()


@needs_kernels
def test_the_kernels_refuse_wrong_kept_samples(kernels_on):
    built = cpu_kernels.kernels()
    x, norm = torch.randn(4, 3, 32), _norm(32)
    w, b = norm.weight.detach(), norm.bias.detach()
    stats = torch.empty(6, 2)
    for kept, match in (
        (torch.tensor([0, 4]), 'layer_norm_bf16: kept samples distinct and within the batch'),
        (torch.tensor([2, 2]), 'layer_norm_bf16: kept samples distinct and within the batch'),
        (torch.tensor([0, 1]).int(), 'layer_norm_bf16: kept a 1-D int64 tensor'),
        (torch.tensor([[0, 1]]), 'layer_norm_bf16: kept a 1-D int64 tensor'),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.layer_norm_bf16(x, w, b, 1e-6, stats, kept)
    with pytest.raises(RuntimeError, match=r'stats a contiguous fp32 \(rows, 2\) tensor'):
        built.layer_norm_bf16(x, w, b, 1e-6, torch.empty(12, 2), torch.tensor([0, 1]))
    grad = torch.randn(2, 3, 32).bfloat16()
    built.layer_norm_backward_bf16(grad, x, stats, w, torch.tensor([1, 2]))
    for args, match in (
        ((grad, x, stats, w, torch.tensor([1, 2, 3])), "grad of kept's samples"),
        ((grad, x, stats, w, torch.tensor([1, 9])), 'kept samples distinct and within the batch'),
        # a sample twice: its dx rows would be written twice, not summed as index_select's are
        ((grad, x, stats, w, torch.tensor([1, 1])), 'kept samples distinct and within the batch'),
        ((grad, x, stats, w), 'a contiguous bf16 grad and fp32 x of one shape'),
        ((grad[..., :16], x, stats, w, torch.tensor([1, 2])), 'of one sample shape with kept'),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.layer_norm_backward_bf16(*args)
