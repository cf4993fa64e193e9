"""oneDNN's linear with the weights packed once into its blocked layout (``PREPACK``): the same
numbers as the row-major weights, bit for bit, in fp32 and bf16, for the layer and the model;
copies that follow the weights; models built under ``torch.inference_mode``."""

import pytest
import torch

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import amx_linear, onednn_linear

from ...conftest import TINY_ARCH

pytestmark = pytest.mark.skipif(
    not onednn_linear.PREPACK, reason='PyTorch without oneDNN weight packing'
)
NEEDS_BF16 = pytest.mark.skipif(
    not onednn_linear.BF16_SUPPORTED, reason='no native bf16 GEMMs in oneDNN on this CPU'
)
PRECISIONS = [
    'fp32',
    pytest.param('bf16', marks=NEEDS_BF16),
    pytest.param('bf16-model', marks=NEEDS_BF16),
]


def _inputs(precision: str, linear: torch.nn.Linear, x: torch.Tensor):
    """The layer and input of a precision: fp32, bf16 autocast of fp32, or both cast to bf16."""
    if precision == 'bf16-model':
        return linear.bfloat16(), x.bfloat16()
    return linear, x


def _context(precision: str):
    if precision == 'bf16':
        return torch.autocast('cpu', dtype=torch.bfloat16)
    return torch.autocast('cpu', enabled=False)


@pytest.fixture(autouse=True)
def _fp32_onednn(monkeypatch):
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', True)  # as on an AVX-512 CPU


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('gelu', [None, 'none', 'tanh'])
@pytest.mark.parametrize('rows', [5, 16, 2 * 197])  # output rows: below, at, above a block
def test_packed_weight_gives_the_row_major_numbers(monkeypatch, precision, gelu, rows):
    torch.manual_seed(0)
    linear, x = _inputs(precision, torch.nn.Linear(40, 72), torch.randn(rows, 40))
    with torch.inference_mode(), _context(precision):
        assert onednn_linear.onednn_applies(x, linear)
        monkeypatch.setattr(onednn_linear, 'PREPACK', False)
        want = onednn_linear.onednn_linear(x, linear, gelu)
        monkeypatch.setattr(onednn_linear, 'PREPACK', True)
        got = onednn_linear.onednn_linear(x, linear, gelu)
    packed = onednn_linear._PACKED[linear.weight][1]
    assert packed.is_mkldnn and packed.dtype == got.dtype
    assert got.dtype == want.dtype and torch.equal(got, want)


def _flat(outs) -> list:
    """The output tensors of a backbone (a tuple per stage, or a tensor)."""
    return [t for out in outs for t in (out if isinstance(out, tuple) else (out,))]


def _model(fast_path: bool = True) -> DistilledVisionTransformer:
    """A tiny model with non-zero biases (the same weights at every call), in eval mode."""
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=32, patch_size=8, fast_path=fast_path
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.normal_(std=0.02)
    return model.eval()


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])  # the last layer: q rows / all
def test_the_model_gives_the_row_major_numbers(monkeypatch, precision, out_type):
    model = _model()
    model.out_type = out_type
    x = torch.randn(3, 3, 32, 32)
    if precision == 'bf16-model':
        model, x = model.bfloat16(), x.bfloat16()
    outs = {}
    for prepack in (False, True):
        monkeypatch.setattr(onednn_linear, 'PREPACK', prepack)
        with torch.inference_mode(), _context(precision):
            outs[prepack] = model(x)
    for got, want in zip(_flat(outs[True]), _flat(outs[False]), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize('precision', PRECISIONS[:2])
def test_packed_weights_follow_the_weights(monkeypatch, precision):
    """Packed again after an in-place change (an optimizer step, ``load_state_dict``), a change
    through ``.data`` plus a mode switch, new storage (``.to()``); not in the ``state_dict``."""
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)  # oneDNN's path (test_amx_linear.py)
    model, ref = _model(), _model(fast_path=False)  # the reference: no oneDNN, no packing
    tol = dict(rtol=1e-4, atol=1e-4) if precision == 'fp32' else dict(rtol=0.05, atol=0.05)
    x = torch.randn(2, 3, 32, 32)

    def check():
        ref.load_state_dict(model.state_dict())
        with torch.inference_mode(), _context(precision):
            got, want = model(x), ref(x)
        for g, w in zip(_flat(got), _flat(want), strict=True):
            torch.testing.assert_close(g, w, **tol)  # stale copies: 50 % off

    check()
    qkv = model.layers[0].attn.qkv.weight
    # in bf16 q's rows are scaled by 1/sqrt(d) in a copy of their own (q_scale_folds)
    packed = onednn_linear._PACKED if precision == 'fp32' else onednn_linear._PACKED_SCALED
    assert packed[qkv][1].is_mkldnn
    assert set(model.state_dict()) == set(ref.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # in place, as an optimizer step
    check()
    for p in model.parameters():  # through .data: the version is unchanged
        p.data.mul_(0.5)
    model.eval()  # a mode switch drops the copies (the validation loop calls it)
    assert qkv not in packed
    check()
    model.to(torch.float64).to(torch.float32)  # new storage
    check()


@pytest.mark.parametrize('precision', PRECISIONS[:2])
def test_a_model_built_under_inference_mode(precision):
    """Its weights are inference tensors, without a version: nothing is kept, every call packs
    (it raised in bf16 before: "Inference tensors do not track version counter")."""
    with torch.inference_mode():
        model = _model()
        x = torch.randn(2, 3, 32, 32)
        with _context(precision):
            got = model(x)
    assert model.layers[0].attn.qkv.weight.is_inference()
    assert model.layers[0].attn.qkv.weight not in onednn_linear._PACKED
    ref = _model()
    ref.load_state_dict(model.state_dict())
    with torch.inference_mode(), _context(precision):
        want = ref(x)
    for g, w in zip(_flat(got), _flat(want), strict=True):
        assert torch.equal(g, w)
