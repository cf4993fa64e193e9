"""The tile-unit attention with autograd (``amx_attention_grad.py``): its forward is the
inference kernel's (the same bits), the softmax it writes for the backward is the softmax,
its gradients are the GEMM attention's within bf16 rounding and near the exact ones, its
backward on the tile unit is the GEMM form's (the same products and roundings) whether it
writes q's, k's and v's gradients apart or qkv's whole, the kernel refuses wrong tensors by
name, and a bf16 training step of the fast path runs it in every layer with gradients reaching
every parameter, close to the step without it.

On CPUs without AMX these skip (the GEMM attention's autograd runs there).
"""

import pytest
import torch

from mmdeit.models.utils import amx_attention as amx
from mmdeit.models.utils import amx_attention_grad as grad_mod
from mmdeit.models.utils import amx_linear as amx_linear_mod
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
    assert ran == ['attention_bf16', 'attention_backward_bf16']  # forward and backward
    assert out.grad_fn.name() == 'QKVTileAttentionBackward'
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
@pytest.mark.parametrize('amx_linear', [True, False], ids=['tile-linear', 'onednn-linear'])
def test_training_step_with_it_is_the_step_without_within_bf16(
    amx_on, monkeypatch, out_type, amx_linear
):
    """A bf16 autocast training step of the fast path (drop path 0.1: dropped samples skipped):
    the tile-unit attention and its backward in every layer, gradients on every parameter,
    close to the GEMM attention's step; with the qkv GEMM's output a tensor of its own (the tile
    unit's linear) or a view of one made inside the linear's autograd function (oneDNN's)."""

    monkeypatch.setattr(amx_linear_mod, 'USE_AMX_LINEAR', amx_linear)  # qkv: a new tensor or a view
    x = torch.randn(4, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got = training_grads(x, out_type, 0.1)
    assert ran.count('attention_bf16') == 2  # both layers
    assert ran.count('attention_backward_bf16') == 2
    monkeypatch.setattr(amx, 'USE_AMX_ATTENTION', False)
    want = training_grads(x, out_type, 0.1)
    assert ran.count('attention_bf16') == 2
    assert_grads_close(got, want)


def _probs(q, k, v, scale):
    """P (B, h, n, N) as the forward kernel writes it for the backward."""
    probs = q.new_empty(*q.shape[:3], k.shape[2])
    cpu_kernels.kernels().attention_bf16(q, k, v, scale, probs)
    return probs


def _assert_within_bf16_sums(got, want):
    """The same products and roundings, fp32 sums in another order: nearly all the same bits,
    the rest within a few bf16 units of the gradient's size."""
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype == torch.bfloat16
        size = w.float().abs().max().item()
        assert (g.float() - w.float()).abs().max().item() <= 0.02 * size
        assert (g == w).float().mean().item() >= 0.97


@needs_amx
@pytest.mark.parametrize('shape', SHAPES + [(2, 2, 50, 97), (1, 2, 33, 33)], ids=str)
@pytest.mark.parametrize('strided', [True, False], ids=['views', 'contiguous'])
def test_tile_backward_is_the_gemm_form(amx_on, monkeypatch, shape, strided):
    """``_backward`` on the tile unit against ``gemm_backward`` (bmm calls, ATen's softmax
    backward) from the same P, q, k, v (views of qkv, or copies) and dO (a strided view too)."""
    from .test_amx_attention import qkv_views

    torch.manual_seed(sum(shape))
    B, h, n, N = shape
    q, k, v = qkv_views(B, h, n, N, strided)
    probs = _probs(q, k, v, 0.125)
    grad = torch.randn(B, n, 2 * h * 64).bfloat16()[..., : h * 64]  # rows 2*h*64 apart
    ran = spy_kernels(monkeypatch)
    got = grad_mod._backward(grad, q, k, v, probs, 0.125)
    assert ran == ['attention_backward_bf16']
    monkeypatch.setattr(grad_mod, 'USE_AMX_ATTENTION_GRAD', False)
    want = grad_mod._backward(grad, q, k, v, probs, 0.125)
    assert ran == ['attention_backward_bf16']  # the GEMM form: no kernel
    _assert_within_bf16_sums(got, want)


@needs_amx
@pytest.mark.parametrize('n', [198, 2], ids=['all-queries', 'cls-dist'])
def test_qkv_gradient_written_whole(amx_on, monkeypatch, n):
    """q, k, v the views of one qkv output: one autograd node writes qkv's gradient (q's rows
    past n zero), the GEMM form's within bf16 sums, switch on or off."""
    torch.manual_seed(n)
    qkv, q, k, v = _leaf_qkv(2, 3, n, 198)
    assert grad_mod.qkv_of(q, k, v) is not None
    grad = torch.randn(2, n, 3 * 64).bfloat16()
    grads = []
    for tile in (True, False):
        monkeypatch.setattr(grad_mod, 'USE_AMX_ATTENTION_GRAD', tile)
        out = amx.attention(q, k, v, 0.125)
        assert out.grad_fn.name() == 'QKVTileAttentionBackward'
        grads.append(torch.autograd.grad(out, qkv, grad)[0])
    _assert_within_bf16_sums(grads[:1], grads[1:])
    assert grads[0].shape == qkv.shape
    if n < 198:
        assert not grads[0][:, n:, : 3 * 64].any()  # q's rows that were not read


def test_qkv_of_finds_only_the_three_views_of_one_tensor():
    qkv = torch.randn(2, 10, 3 * 2 * 64).bfloat16().requires_grad_()
    q, k, v = qkv.view(2, 10, 3, 2, 64).permute(2, 0, 3, 1, 4).unbind(0)
    assert grad_mod.qkv_of(q, k, v).data_ptr() == qkv.data_ptr()
    assert grad_mod.qkv_of(q[:, :, :2], k, v) is not None  # the last layer's cls and dist
    assert grad_mod.qkv_of(q.contiguous(), k, v) is None  # not a view
    assert grad_mod.qkv_of(k, q, v) is None  # another order
    other = qkv.clone().view(2, 10, 3, 2, 64).permute(2, 0, 3, 1, 4)[2]
    assert grad_mod.qkv_of(q, k, other) is None  # views of two tensors
    kv = torch.randn(2, 10, 2 * 2 * 64).bfloat16().view(2, 10, 2, 2, 64).permute(2, 0, 3, 1, 4)
    assert grad_mod.qkv_of(q, kv[0], kv[1]) is None
    # a base outside the autograd graph: an autograd function's output that is a view of a
    # tensor made in its forward (oneDNN's linear of a 3-D input)
    out = _ViewOfInternal.apply(qkv)
    q, k, v = out.view(2, 10, 3, 2, 64).permute(2, 0, 3, 1, 4).unbind(0)
    assert q.requires_grad and not q._base.requires_grad
    assert grad_mod.qkv_of(q, k, v) is None


class _ViewOfInternal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return (x * 1).view(-1).view(x.shape)

    @staticmethod
    def backward(ctx, grad):
        return grad


@needs_amx
def test_the_backward_kernel_refuses_wrong_tensors_by_name(amx_on):
    from .test_amx_attention import qkv_views

    q, k, v = qkv_views(1, 2, 8, 8, True)
    probs = _probs(q, k, v, 0.125)
    grad = torch.randn(1, 8, 128).bfloat16()
    built = cpu_kernels.kernels()

    def call(**changed):
        args = dict(grad=grad, q=q, k=k, v=v, probs=probs, dq=torch.empty_like(q))
        args.update(dk=torch.empty_like(k), dv=torch.empty_like(v))
        args.update(changed)
        built.attention_backward_bf16(
            args['grad'], args['q'], args['k'], args['v'], args['probs'], 0.125,
            args['dq'], args['dk'], args['dv'],
        )  # fmt: skip

    call()
    for field, bad, message in (
        ('probs', probs.float(), r'probs a contiguous bf16 \(B, h, n, N\)'),
        ('probs', probs[..., :4], r'probs a contiguous bf16'),
        ('grad', grad[:, :4], r'grad a bf16 \(B, n, h\*d\)'),
        ('grad', grad.float(), r'grad a bf16'),
        ('dq', torch.empty(1, 2, 9, 64, dtype=torch.bfloat16), r'dq a bf16 \[1, 2, 8, 64\]'),
        ('dk', torch.empty_like(k).float(), r'dk a bf16'),
        ('dv', torch.empty(1, 2, 64, 8, dtype=torch.bfloat16).transpose(2, 3), r'dv a bf16'),
        ('k', k.float(), r'k a bf16'),
    ):
        with pytest.raises(RuntimeError, match=message):
            call(**{field: bad})
