"""The attention's ``1/sqrt(d)`` folded into q's projection (``gemm_attention.q_scale_folds``):
where it applies, the same bits as q scaled after its GEMM (layer and model, every output type,
autocast and a bf16 model, all tokens and the read tokens only), copies that follow the
weights, and ``onednn_linear``'s ``scale_rows`` alone."""

import pytest
import torch

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.backbones.fast_transformer_layer import (
    FastMultiheadAttention,
    FastTransformerEncoderLayer,
)
from mmdeit.models.utils import amx_linear, onednn_linear
from mmdeit.models.utils import gemm_attention as ga

pytestmark = pytest.mark.skipif(
    not onednn_linear.BF16_SUPPORTED, reason='no native bf16 GEMMs in oneDNN on this CPU'
)
PRECISIONS = ['bf16 autocast', 'bf16 model']


def _inputs(precision: str, module: torch.nn.Module, x: torch.Tensor):
    if precision == 'bf16 model':
        return module.bfloat16(), x.bfloat16()
    return module, x


def _autocast(precision: str):
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16 autocast')


@pytest.fixture
def scales(monkeypatch) -> list:
    """The ``scale`` of every GEMM attention (the function is spied on, still called)."""
    calls = []
    real = ga._gemm_attention

    def spy(q, k, v, scale):
        calls.append(scale)
        return real(q, k, v, scale)

    monkeypatch.setattr(ga, '_gemm_attention', spy)
    return calls


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('head_dims, folds', [(16, True), (64, True), (12, False), (48, False)])
def test_applies_for_a_power_of_two_scale_without_autograd(precision, head_dims, folds):
    attn = FastMultiheadAttention(2 * head_dims, 2).eval()
    attn, x = _inputs(precision, attn, torch.randn(2, 5, 2 * head_dims))
    with torch.no_grad(), _autocast(precision):
        assert ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0) == folds
        assert not ga.q_scale_folds(x, attn.qkv, attn.scale, 0.1)  # attention dropout
    with _autocast(precision):  # autograd on: no oneDNN, q scaled after its GEMM
        assert not ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0)


def test_not_in_fp32_nor_switched_off_but_while_compiling(monkeypatch):
    attn, x = FastMultiheadAttention(32, 2).eval(), torch.randn(2, 5, 32)
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', True)  # oneDNN in fp32 too
    with torch.no_grad():
        assert onednn_linear.onednn_applies(x, attn.qkv)
        assert not ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0)  # fp32: SDPA scales q
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0)
            monkeypatch.setattr(ga, 'FOLD_Q_SCALE', False)
            assert not ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0)
            monkeypatch.setattr(ga, 'FOLD_Q_SCALE', True)
            monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)  # the op takes it
            assert ga.q_scale_folds(x, attn.qkv, attn.scale, 0.0)


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('out_type', DistilledVisionTransformer.OUT_TYPES)
@pytest.mark.parametrize('head_dims', [16, 12])
@pytest.mark.parametrize('prepack', [True, False])
def test_the_model_gives_the_same_bits(
    monkeypatch, scales, precision, out_type, head_dims, prepack
):
    """Folded or not, bit for bit; ``cls_token`` and ``raw`` run the last layer on the read
    tokens only (q from its own GEMM), ``featmap`` on all."""
    monkeypatch.setattr(onednn_linear, 'PREPACK', prepack and onednn_linear.PREPACK)
    torch.manual_seed(0)
    arch = dict(embed_dims=2 * head_dims, num_layers=2, num_heads=2, feedforward_channels=48)
    model = DistilledVisionTransformer(arch=arch, img_size=32, patch_size=8, out_type=out_type)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(std=0.5)  # biases that matter
    model, x = _inputs(precision, model.eval(), torch.randn(3, 3, 32, 32))
    outs = {}
    for fold in (True, False):
        monkeypatch.setattr(ga, 'FOLD_Q_SCALE', fold)
        with torch.inference_mode(), _autocast(precision):
            outs[fold] = model(x)[-1]
    got, want = (o if isinstance(o, torch.Tensor) else torch.cat(o) for o in outs.values())
    assert got.dtype == want.dtype and torch.equal(got, want)
    scale = head_dims**-0.5
    if head_dims == 16:  # folded in both layers, then scaled after the GEMM
        assert scales == [1.0, 1.0, scale, scale]
    else:
        assert scales == [scale] * 4


@pytest.mark.parametrize('precision', PRECISIONS)
def test_copies_follow_the_weights(monkeypatch, scales, precision):
    """Scaled again after an in-place change (an optimizer step) and after a mode switch
    following a change through ``.data``; not in the ``state_dict``."""
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)  # oneDNN's path (test_amx_linear.py)
    torch.manual_seed(0)
    layer, x = _inputs(precision, FastTransformerEncoderLayer(32, 2, 64), torch.randn(2, 7, 32))
    attn = layer.eval().attn

    def check():
        with torch.no_grad(), _autocast(precision):
            got = attn.branch(x)  # as the fast encoder layer calls it
            q, k, v = attn._split_heads(attn.qkv(x), 3)  # the plain layer
            want = attn.proj(ga._gemm_attention(q, k, v, attn.scale))
        assert torch.equal(got, want)

    check()
    assert scales[0] == 1.0 and attn.qkv.weight in onednn_linear._PACKED_SCALED
    assert set(attn.state_dict()) == {'qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias'}
    with torch.no_grad():
        attn.qkv.weight.mul_(1.5)  # in place, as an optimizer step
        attn.qkv.bias.add_(0.25)
    check()
    attn.qkv.weight.data.mul_(0.5)  # through .data: the version is unchanged
    layer.eval()  # a mode switch of the layer drops the copies (the validation loop calls it)
    assert attn.qkv.weight not in onednn_linear._PACKED_SCALED
    check()


@pytest.mark.parametrize('precision', ['fp32', *PRECISIONS])
@pytest.mark.parametrize('rows', [slice(None), slice(0, 8), slice(8, 24)])
@pytest.mark.parametrize('prepack', [True, False])
def test_scale_rows_scales_exactly_the_first_rows(monkeypatch, precision, rows, prepack):
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', True)
    monkeypatch.setattr(onednn_linear, 'PREPACK', prepack and onednn_linear.PREPACK)
    torch.manual_seed(0)
    linear, x = _inputs(precision, torch.nn.Linear(16, 24), torch.randn(3, 5, 16))
    with torch.inference_mode(), _autocast(precision):
        want = onednn_linear.onednn_linear(x, linear, rows=rows)
        got = onednn_linear.onednn_linear(x, linear, rows=rows, scale_rows=(8, 0.125))
    scaled = torch.arange(24)[rows] < 8  # the output channels among the first 8
    assert torch.equal(got[..., scaled], want[..., scaled] * 0.125)
    assert torch.equal(got[..., ~scaled], want[..., ~scaled])


def test_scale_rows_where_it_cannot_apply_is_refused():
    linear, x = torch.nn.Linear(16, 24), torch.randn(3, 16)
    with pytest.raises(ValueError, match='scale_rows only where onednn_applies'):
        onednn_linear.linear_rows(x, linear, slice(8), scale_rows=(8, 0.125))  # autograd on


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('rows', [slice(None), slice(0, 16), slice(16, 24)])
@pytest.mark.parametrize('prepack', [True, False])
def test_scale_rows_while_compiling_is_the_ops_argument(monkeypatch, precision, rows, prepack):
    """While ``torch.compile`` traces, ``scale_rows`` goes to the op ``mmdeit::onednn_linear``
    (the whole layer, then the rows): the eager function's bits."""
    monkeypatch.setattr(onednn_linear, 'PREPACK', prepack and onednn_linear.PREPACK)
    torch.manual_seed(0)
    linear, x = _inputs(precision, torch.nn.Linear(16, 24), torch.randn(3, 5, 16))
    with torch.inference_mode(), _autocast(precision):
        want = onednn_linear.onednn_linear(x, linear, rows=rows, scale_rows=(8, 0.125))
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)  # the op is called
        got = onednn_linear.onednn_linear(x, linear, rows=rows, scale_rows=(8, 0.125))
        plain = onednn_linear.onednn_linear(x, linear, rows=rows)
    assert torch.equal(got, want)
    scaled = torch.arange(24)[rows] < 8  # the output channels among the first 8
    assert torch.equal(got[..., scaled], plain[..., scaled] * 0.125)
    assert torch.equal(got[..., ~scaled], plain[..., ~scaled])
