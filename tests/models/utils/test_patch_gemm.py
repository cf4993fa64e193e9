"""The patch embedding as a GEMM on the patches (``mmdeit/models/utils/patch_gemm.py``): mmcv's
``PatchEmbed`` numbers in fp32 and bf16 autocast over image and patch sizes, with and without its
norm; in bf16 autocast training on AMX its gradients (the weight's on the tile unit); where it
applies and where mmcv's convolution runs; the backbone's fast path uses it."""

import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import PatchEmbed

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import amx_linear_grad, patch_gemm

from ...conftest import TINY_ARCH
from .test_cpu_kernels import spy_kernels

BF16_UNIT = 2.0**-7  # one bf16 unit in the last place, relative


def _patch_embed(in_channels: int, patch: int, norm: bool, embed_dims: int = 24) -> PatchEmbed:
    torch.manual_seed(patch)
    module = PatchEmbed(
        in_channels=in_channels,
        embed_dims=embed_dims,
        conv_type='Conv2d',
        kernel_size=patch,
        stride=patch,
        norm_cfg=dict(type='LN') if norm else None,
    )
    return module.eval()


@pytest.mark.parametrize('norm', [False, True], ids=['no-norm', 'norm'])
@pytest.mark.parametrize(
    'hw, patch, in_channels',
    [((32, 32), 8, 3), ((48, 32), 16, 3), ((224, 224), 16, 3), ((16, 12), 4, 1)],
)
@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_gemm_gives_the_convolutions_tokens(hw, patch, in_channels, norm, precision):
    module = _patch_embed(in_channels, patch, norm)
    x = torch.randn(2, in_channels, *hw)
    bf16 = precision == 'bf16'
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        assert patch_gemm.gemm_applies(module, x)
        got, got_hw = patch_gemm.embed(module, x)
        want, want_hw = module(x)
    assert got_hw == want_hw == (hw[0] // patch, hw[1] // patch)
    assert got.shape == want.shape == (2, got_hw[0] * got_hw[1], 24)
    assert got.dtype == want.dtype and got.is_contiguous()
    g, w = got.float(), want.float()
    if not bf16:  # fp32 sums in another order
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    elif not norm:  # the same bf16 products, summed in another order, rounded once: 1 unit
        assert torch.all((g - w).abs() <= BF16_UNIT * w.abs() + 1e-6)
    else:  # that unit through the norm (fp32 under autocast), in few elements
        torch.testing.assert_close(g, w, rtol=0, atol=2e-2)
        assert ((g - w).abs() > 1e-5).float().mean() < 0.01


def test_where_it_applies():
    module = _patch_embed(3, 8, norm=False)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert patch_gemm.gemm_applies(module, x)
        assert not patch_gemm.gemm_applies(module, x[..., :30])  # mmcv pads: its convolution
        tokens, hw = patch_gemm.embed(module, x[..., :30])
        assert hw == (4, 4) and torch.equal(tokens, module(x[..., :30])[0])
        module.projection.padding = (1, 1)
        assert not patch_gemm.gemm_applies(module, x)
        module.projection.padding = (0, 0)
        module.projection.stride = (4, 4)  # overlapping patches
        assert not patch_gemm.gemm_applies(module, x)
        module.projection.stride = (8, 8)
        assert patch_gemm.gemm_applies(module, x)
    assert not patch_gemm.gemm_applies(module, x)  # autograd on: the convolution


def _embed_grads(module: PatchEmbed, x: torch.Tensor, fast: bool):
    """bf16 autocast tokens and the projection's weight and bias gradients."""
    module.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        tokens, _ = patch_gemm.embed(module, x, fast)
    tokens.float().square().sum().backward()
    conv = module.projection
    return tokens, conv.weight.grad, conv.bias.grad


@pytest.mark.skipif(not amx_linear_grad.AMX_SUPPORTED, reason='no AMX tile unit')
@pytest.mark.parametrize('hw, patch', [((32, 32), 8), ((48, 32), 16)])
def test_training_gemm_gives_the_convolutions_gradients(amx_on, monkeypatch, hw, patch):
    """With autograd under bf16 autocast on AMX: the GEMM with its weight gradient on the tile
    unit (``amx_linear_grad.TileLinear``); the convolution's tokens within a bf16 unit and its
    gradients within bf16 rounding; with that switch off, the convolution."""
    module = _patch_embed(3, patch, norm=False, embed_dims=64).train()  # channels: 32k
    nn.init.normal_(module.projection.bias)
    x = torch.randn(2, 3, *hw)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert patch_gemm.gemm_applies(module, x)
    ran = spy_kernels(monkeypatch)
    tokens, dw, db = _embed_grads(module, x, fast=True)
    assert ran.count('amx_weight_grad_bf16') == 1
    want_tokens, want_dw, want_db = _embed_grads(module, x, fast=False)
    assert ran.count('amx_weight_grad_bf16') == 1  # the convolution
    assert tokens.dtype == want_tokens.dtype == torch.bfloat16 and tokens.is_contiguous()
    g, w = tokens.float(), want_tokens.float()
    assert torch.all((g - w).abs() <= BF16_UNIT * w.abs() + 1e-6)
    for got, want in ((dw, want_dw), (db, want_db)):
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).norm() <= 0.01 * want.norm()
    monkeypatch.setattr(amx_linear_grad, 'USE_AMX_WEIGHT_GRAD', False)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not patch_gemm.gemm_applies(module, x)


def test_switch_and_fast_flag_give_the_convolution(monkeypatch):
    module = _patch_embed(3, 8, norm=False)
    x = torch.randn(1, 3, 32, 32)
    calls = []
    real = module.forward
    monkeypatch.setattr(module, 'forward', lambda t: calls.append(1) or real(t))
    with torch.no_grad():
        patch_gemm.embed(module, x)
        assert not calls
        patch_gemm.embed(module, x, fast=False)
        assert len(calls) == 1
        monkeypatch.setattr(patch_gemm, 'USE_PATCH_GEMM', False)
        assert not patch_gemm.gemm_applies(module, x)
        patch_gemm.embed(module, x)
        assert len(calls) == 2


@pytest.mark.parametrize('fast_path', [True, False])
def test_backbone_embeds_through_it_on_the_fast_path_only(monkeypatch, fast_path):
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=32, patch_size=8, out_type='cls_token', fast_path=fast_path
    ).eval()
    used = []
    real = patch_gemm.gemm_applies
    monkeypatch.setattr(patch_gemm, 'gemm_applies', lambda *a: used.append(real(*a)) or used[-1])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = torch.stack(model(x)[-1])
        monkeypatch.setattr(patch_gemm, 'USE_PATCH_GEMM', False)
        want = torch.stack(model(x)[-1])
    assert used == ([True, False] if fast_path else [])  # the second: the switch off
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
