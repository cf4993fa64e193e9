"""The training linears' weight and bias gradients on the tile unit (``amx_linear_grad.py``):
the kernel's dW and db against fp64 over shapes and both orientations, :class:`TileLinear`
against autocast's linear (the forward ``amx_linear``'s, dx the same bits, dW and db within
bf16 rounding and closer to the exact ones), where it applies, the C++ refusals, and bf16
training steps of the fast path running it in every linear with gradients reaching every
parameter, close to the steps without it.

On CPUs without AMX these skip (autocast's linear runs there).
"""

import pytest
import torch
import torch.nn as nn

from mmdeit.models.utils import amx_attention as amx
from mmdeit.models.utils import amx_linear, cpu_kernels
from mmdeit.models.utils import amx_linear_grad as alg

from .test_amx_attention import assert_grads_close, training_grads
from .test_cpu_kernels import spy_kernels

needs_amx = pytest.mark.skipif(not amx.AMX_SUPPORTED, reason='no AMX tile unit')

# (tokens, C_in, C_out): both orientations (x or dy the narrower), tokens not a multiple of
# 32 or of the kernel's chunk (256), one token, DeiT-S's fc1 at a batch of 2
SHAPES = [
    (1, 32, 64),
    (37, 64, 32),
    (257, 96, 64),
    (513, 192, 576),
    (300, 768, 128),
    (396, 384, 1536),
]


def _exact(x: torch.Tensor, dy: torch.Tensor):
    """dW = dy^T x and db = dy's column sums in fp64."""
    return dy.double().t() @ x.double(), dy.double().sum(0)


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).norm() / want.norm()).item()


@needs_amx
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('strided', [False, True])
def test_kernel_is_the_exact_gradient_within_fp32(amx_on, shape, strided):
    torch.manual_seed(sum(shape))
    M, c_in, c_out = shape
    x = torch.randn(M, c_in + 32 * strided).bfloat16()[:, :c_in]  # rows c_in + 32 apart
    dy = torch.randn(M, c_out).bfloat16()
    dw, db = cpu_kernels.kernels().amx_weight_grad_bf16(x, dy, True)
    want_w, want_b = _exact(x, dy)
    assert dw.shape == (c_out, c_in) and db.shape == (c_out,)
    assert dw.dtype == db.dtype == torch.float32 and dw.is_contiguous()
    assert _rel(dw, want_w) < 1e-6 and _rel(db, want_b) < 1e-6  # fp32 sums of exact products
    dw_only, none = cpu_kernels.kernels().amx_weight_grad_bf16(x, dy, False)
    assert torch.equal(dw_only, dw) and none.numel() == 0


@needs_amx
def test_kernel_refuses_wrong_operands(amx_on):
    built = cpu_kernels.kernels()
    x, dy = torch.randn(8, 32).bfloat16(), torch.randn(8, 64).bfloat16()
    for args, match in (
        ((x.float(), dy), 'bf16 x and dy'),
        ((x, dy[:7]), 'the same M > 0 rows'),
        ((x[:0], dy[:0]), 'the same M > 0 rows'),
        ((x[:, :16], dy), 'C_in and C_out multiples of 32, got 16 and 64'),
        ((x, torch.randn(64, 8).bfloat16().t()), 'rows contiguous'),
    ):
        with pytest.raises(RuntimeError, match=match):
            built.amx_weight_grad_bf16(*args, True)


def _linear_grads(linear: nn.Linear, x: torch.Tensor, grad: torch.Tensor, tile: bool):
    """The output and the gradients of x, the weight and the bias under bf16 autocast."""
    linear.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert alg.applies(x, linear)
        out = alg.linear(x, linear) if tile else linear(x)
    out.backward(grad)
    return out, x.grad, linear.weight.grad, linear.bias.grad


@needs_amx
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('x_dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('amx_forward', [True, False])
def test_tile_linear_is_autocasts_linear_within_bf16(
    amx_on, monkeypatch, shape, x_dtype, amx_forward
):
    """The forward: ``amx_linear``'s (or with its switch off oneDNN's, autocast's bits); dx
    autocast's bits; dW and db in fp32, within bf16 rounding of autocast's and nearer the exact
    gradients."""
    torch.manual_seed(sum(shape))
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', amx_forward)
    M, c_in, c_out = shape
    linear = nn.Linear(c_in, c_out)
    x = torch.randn(1, M, c_in).to(x_dtype)  # (B, N, C_in)
    grad = torch.randn(1, M, c_out).bfloat16()
    ran = spy_kernels(monkeypatch)
    out, dx, dw, db = _linear_grads(linear, x, grad, tile=True)
    assert ran.count('amx_weight_grad_bf16') == 1 and out.grad_fn.name() == 'TileLinearBackward'
    assert ran.count('amx_linear_bf16') == amx_forward
    want_out, want_dx, want_dw, want_db = _linear_grads(linear, x, grad, tile=False)
    assert out.dtype == torch.bfloat16
    if amx_forward:  # the inference kernel's bits; oneDNN's within one bf16 rounding
        with torch.no_grad():
            assert torch.equal(out, amx_linear.linear(x.bfloat16(), linear.weight, linear.bias))
        torch.testing.assert_close(out.float(), want_out.float(), rtol=2**-7, atol=1e-5)
    else:
        assert torch.equal(out, want_out)  # the same oneDNN linear
    assert dx.dtype == x_dtype and torch.equal(dx, want_dx)  # the same bf16 mm
    assert dw.dtype == db.dtype == torch.float32
    exact_w, exact_b = _exact(x.bfloat16().view(M, c_in), grad.view(M, c_out))
    for got, want, exact in ((dw, want_dw, exact_w), (db, want_db, exact_b)):
        assert (got.double() - want.double()).abs().max() <= 0.01 * exact.abs().max()
        assert _rel(got, exact) < 1e-6 and _rel(got, exact) <= _rel(want, exact)  # not rounded


@needs_amx
def test_where_it_applies(amx_on, monkeypatch):
    linear, x = nn.Linear(64, 32), torch.randn(2, 5, 64)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert alg.applies(x, linear) and alg.applies(x.bfloat16(), linear)
        with torch.no_grad():
            assert not alg.applies(x, linear)
        assert not alg.applies(x, nn.Linear(64, 48))  # 48 output channels
        assert not alg.applies(x[..., :48], nn.Linear(48, 32))
        assert not alg.applies(x.double(), linear)
        assert not alg.applies(x[0, 0], linear)  # no token dim
        assert not alg.applies(x[:0], linear)
        hooked = nn.Linear(64, 32)
        hooked.register_forward_hook(lambda *args: None)
        assert not alg.applies(x, hooked)
        frozen = nn.Linear(64, 32).requires_grad_(False)
        assert not alg.applies(x, frozen)
        assert not alg.applies(x, nn.Linear(64, 32).bfloat16())  # a bf16 model: fp32 weights only
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
        assert not alg.applies(x, linear)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
        monkeypatch.setattr(alg, 'USE_AMX_WEIGHT_GRAD', False)
        assert not alg.applies(x, linear)
    monkeypatch.setattr(alg, 'USE_AMX_WEIGHT_GRAD', True)
    assert not alg.applies(x, linear)  # no autocast
    with torch.autocast('cpu', dtype=torch.float16):
        assert not alg.applies(x, linear)
    assert not alg.applies(x, nn.Linear(64, 32)) and alg.linear(x, linear).dtype == torch.float32


@needs_amx
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('drop_path_rate', [0.0, 0.1])
def test_training_step_with_it_is_the_step_without_within_bf16(
    amx_on, monkeypatch, out_type, drop_path_rate
):
    """A bf16 autocast training step of the fast path (drop path 0.1: dropped samples skipped;
    0: the shortcut summed by ``_fused_residual_linear``): the tile unit's dW in every linear of
    every layer, gradients on every parameter, close to the step with autocast's linears."""

    x = torch.randn(4, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got = training_grads(x, out_type, drop_path_rate)
    # the patch embedding and 4 linears a layer, the last layer's qkv (q of the first tokens
    # only) excepted with cls_token
    assert ran.count('amx_weight_grad_bf16') == (8 if out_type == 'cls_token' else 9)
    monkeypatch.setattr(alg, 'USE_AMX_WEIGHT_GRAD', False)
    ran.clear()
    want = training_grads(x, out_type, drop_path_rate)
    assert 'amx_weight_grad_bf16' not in ran
    assert_grads_close(got, want)
