"""The tile-unit attention with autograd (``amx_attention.TileAttention``): its forward is the
inference kernel's (the same bits), the softmax it writes for the backward is the softmax,
its gradients are the GEMM attention's within bf16 rounding and near the exact ones, and a
bf16 training step of the fast path runs it in every layer with gradients reaching every
parameter, close to the step without it.

On CPUs without AMX these skip (the GEMM attention's autograd runs there).
"""

import pytest
import torch

from mmdeit.models.utils import amx_attention as amx
from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import gemm_attention as ga

from .test_amx_attention import SHAPES, assert_grads_close, training_grads
from .test_cpu_kernels import spy_kernels

needs_amx = pytest.mark.skipif(not amx.AMX_SUPPORTED, reason='no AMX tile unit')


def _leaf_qkv(B: int, h: int, n: int, N: int):
    """A (B, N, 3*h*64) bf16 leaf (the qkv GEMM's output) and q (B, h, n, 64), k, v (B, h, N,
    64): its views, as the model has them."""
    qkv = (torch.randn(B, N, 3 * h * 64) * 2).bfloat16().requires_grad_()
    q, k, v = qkv.reshape(B, N, 3, h, 64).permute(2, 0, 3, 1, 4).unbind(0)
    return qkv, q[:, :, :n], k, v


def _grads(q, k, v, qkv, scale, grad):
    out = ga._gemm_attention(q, k, v, scale)  # (B, n, h*64)
    (qkv_grad,) = torch.autograd.grad(out, qkv, grad)
    return out, qkv_grad


def _exact(qkv: torch.Tensor, n: int, h: int, scale: float, grad: torch.Tensor):
    """The attention and qkv's gradient in fp64 from the same bf16 inputs."""
    x = qkv.detach().double().requires_grad_()
    B, N = x.shape[:2]
    q, k, v = x.reshape(B, N, 3, h, 64).permute(2, 0, 3, 1, 4).unbind(0)
    attn = (q[:, :, :n] @ k.transpose(-1, -2) * scale).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(B, n, h * 64)
    out.backward(grad.double())
    return out, x.grad


@needs_amx
@pytest.mark.parametrize('shape', SHAPES[:-1], ids=lambda s: 'x'.join(map(str, s)))
def test_gradients_are_the_gemm_attentions_within_bf16(amx_on, monkeypatch, shape):
    torch.manual_seed(sum(shape))
    B, h, n, N = shape
    qkv, q, k, v = _leaf_qkv(*shape)
    grad = torch.randn(B, n, h * 64).bfloat16()
    ran = spy_kernels(monkeypatch)
    assert amx.attention_applies(q, k, v, 0.125)  # autograd on
    out, got = _grads(q, k, v, qkv, 0.125, grad)
    assert ran == ['attention_bf16'] and out.grad_fn.name().endswith('TileAttentionBackward')
    with torch.no_grad():  # the forward: the inference kernel's bits
        assert torch.equal(out, amx.attention(q, k, v, 0.125))
    monkeypatch.setattr(amx, 'USE_AMX_ATTENTION', False)
    want_out, want = _grads(q, k, v, qkv, 0.125, grad)
    exact_out, exact = _exact(qkv, n, h, 0.125, grad)
    assert got.shape == qkv.shape and got.dtype == torch.bfloat16
    # both within bf16 rounding of each other and of the exact gradient (relative to its size)
    size = exact.abs().max().item()
    assert (got.double() - want.double()).abs().max().item() <= 0.03 * size
    err, ref_err = ((g.double() - exact).norm() / exact.norm() for g in (got, want))
    assert err <= 0.02 and err <= 2 * ref_err + 1e-3
    # the output: the scores are rounded to bf16 before the softmax in both forms
    out_err, ref_out_err = (
        (o.double() - exact_out).norm() / exact_out.norm() for o in (out, want_out)
    )
    assert out_err <= 0.02 and out_err <= 1.5 * ref_out_err + 1e-3


@needs_amx
def test_the_softmax_it_writes_is_the_softmax(amx_on):
    torch.manual_seed(0)
    _, q, k, v = _leaf_qkv(2, 3, 37, 37)
    q, k, v = (t.detach() for t in (q, k, v))
    probs = torch.full((2, 3, 37, 37), float('nan'), dtype=torch.bfloat16)
    out = cpu_kernels.kernels().attention_bf16(q, k, v, 0.125, probs)
    scores = (q.double() @ k.double().transpose(-1, -2)).bfloat16()  # rounded as the kernel's
    exact = (scores.double() * 0.125).softmax(-1)
    torch.testing.assert_close(probs.double(), exact, rtol=0.01, atol=2e-3)  # every entry
    assert torch.equal(out, cpu_kernels.kernels().attention_bf16(q, k, v, 0.125))


@needs_amx
def test_the_kernel_refuses_a_wrong_probs_tensor(amx_on):
    _, q, k, v = _leaf_qkv(1, 2, 8, 8)
    q, k, v = (t.detach() for t in (q, k, v))
    built = cpu_kernels.kernels()
    for bad in (
        torch.empty(1, 2, 8, 9, dtype=torch.bfloat16),  # shape
        torch.empty(1, 2, 8, 8),  # dtype
        torch.empty(1, 2, 8, 16, dtype=torch.bfloat16)[..., ::2],  # not contiguous
    ):
        with pytest.raises(RuntimeError, match=r'probs a contiguous bf16 \(B, h, n, N\)'):
            built.attention_bf16(q, k, v, 0.125, bad)


@needs_amx
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
def test_training_step_with_it_is_the_step_without_within_bf16(amx_on, monkeypatch, out_type):
    """A bf16 autocast training step of the fast path (drop path 0.1: dropped samples skipped):
    the tile-unit attention in every layer, gradients on every parameter, close to the GEMM
    attention's step."""

    x = torch.randn(4, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got = training_grads(x, out_type, 0.1)
    assert ran.count('attention_bf16') == 2  # both layers
    monkeypatch.setattr(amx, 'USE_AMX_ATTENTION', False)
    want = training_grads(x, out_type, 0.1)
    assert ran.count('attention_bf16') == 2
    assert_grads_close(got, want)
