"""The encoder layer's fast paths: same numbers as mmpretrain's layer, no layout copies."""

from collections import Counter

import pytest
import torch
from mmpretrain.models.backbones.vision_transformer import (
    TransformerEncoderLayer as MMPretrainLayer,
)
from torch.profiler import ProfilerActivity, profile

from mmdeit.models.backbones.transformer_layer import (
    FFN,
    MultiheadAttention,
    TransformerEncoderLayer,
)
from mmdeit.models.utils import onednn_linear

CFG = dict(embed_dims=48, num_heads=3, feedforward_channels=96)


def _op_counts(layer, x, context) -> Counter:
    """How often each aten op ran in one forward, nested calls included (torch profiler)."""
    with context(), profile(activities=[ProfilerActivity.CPU]) as prof:
        layer(x)
    return Counter(e.name for e in prof.events() if e.name.startswith('aten::'))


def _pair(**kwargs):
    ours = TransformerEncoderLayer(**CFG, norm_cfg=dict(type='LN', eps=1e-6), **kwargs)
    for p in ours.parameters():  # non-trivial values everywhere (biases, norms, LayerScale)
        torch.nn.init.normal_(p, std=0.2)
    theirs = MMPretrainLayer(**CFG, norm_cfg=dict(type='LN', eps=1e-6), **kwargs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def _run(layer, x, seed=0):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = layer(x)
    out.square().mean().backward()
    return out, x.grad, {n: p.grad for n, p in layer.named_parameters()}


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(),  # shortcut summed inside the GEMM
        dict(drop_path_rate=0.5),  # stochastic depth as one addcmul, same random stream
        dict(drop_rate=0.3, layer_scale_init_value=0.1),  # the generic path
    ],
)
def test_train_mode_matches_mmpretrain(kwargs):
    ours, theirs = _pair(**kwargs)
    x = torch.randn(4, 10, 48)
    got, want = _run(ours.train(), x), _run(theirs.train(), x)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    for name, grad in got[2].items():
        torch.testing.assert_close(grad, want[2][name], msg=name)


@pytest.mark.parametrize('grad_mode', [torch.no_grad, torch.inference_mode])
def test_inference_is_exact_and_leaves_the_input_alone(grad_mode):
    ours, theirs = _pair()
    x = torch.randn(2, 10, 48)
    x_before = x.clone()
    with grad_mode():
        got = ours.eval()(x)
        want = theirs.eval()(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture
def blas_path(monkeypatch):
    """Run inference through the ordinary ops, as on a PyTorch without oneDNN."""
    monkeypatch.setattr(onednn_linear, '_HAS_OP', False)


def test_no_layout_copies_around_attention(blas_path):
    layer = TransformerEncoderLayer(**CFG).eval()
    x = torch.randn(2, 10, 48)
    for context in (torch.inference_mode, torch.enable_grad):
        ops = _op_counts(layer, x, context)
        # qkv is viewed as q, k, v and SDPA's output as (B*N, C) for the projection: the only
        # copies are the bias broadcasts inside the two addmm (qkv, fc1).
        assert ops['aten::clone'] == 0, ops
        assert ops['aten::copy_'] == ops['aten::addmm'] == 2, ops
        assert ops['aten::_scaled_dot_product_flash_attention_for_cpu'] == 1, ops
        assert ops['aten::addmm_'] == 2, ops  # both shortcuts are summed inside the GEMMs
    ops = _op_counts(layer, x, torch.inference_mode)
    assert ops['aten::gelu_'] == 1 and ops['aten::add_'] == 1, ops  # the FFN works in place


@pytest.mark.skipif(not onednn_linear._HAS_OP, reason='PyTorch built without oneDNN')
def test_inference_runs_the_linears_through_onednn_with_gelu_fused():
    ours, theirs = _pair()
    x = torch.randn(2, 10, 48)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = ours.eval()(x)
    ops = Counter(e.name for e in prof.events())
    assert ops['mkldnn::_linear_pointwise'] == 4, ops  # qkv, proj, fc1 + GELU, fc2
    assert ops['aten::addmm'] == ops['aten::gelu_'] == ops['aten::copy_'] == 0, ops
    assert ops['aten::add_'] == 2, ops  # the two shortcuts, summed into the GEMM outputs
    with torch.no_grad():
        want = theirs.eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # With autograd on, the ordinary ops run (oneDNN's op has no backward).
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(x.requires_grad_(True)).sum().backward()
    assert 'mkldnn::_linear_pointwise' not in {e.name for e in prof.events()}


def test_identity_argument(blas_path):
    attn = MultiheadAttention(48, 3).eval()
    ffn = FFN(48, 96).eval()
    x, shortcut = torch.randn(2, 10, 48), torch.randn(2, 10, 48)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, identity=shortcut), shortcut + attn(x))
        want = shortcut + ffn(x)
        scratch = shortcut.clone()
        got = ffn(x, identity=scratch, reuse_identity=True)
    torch.testing.assert_close(got, want)
    assert got.data_ptr() == scratch.data_ptr()  # written in place, no new tensor
    # With autograd on, reuse_identity is ignored: the shortcut may be needed for backward.
    scratch = shortcut.clone().requires_grad_(True)
    got = ffn(x, identity=scratch, reuse_identity=True)
    assert got.data_ptr() != scratch.data_ptr()
    torch.testing.assert_close(got, want)


def test_with_cp_and_drop_path_keep_outputs_and_gradients():
    plain = TransformerEncoderLayer(**CFG, drop_path_rate=0.5)
    cp = TransformerEncoderLayer(**CFG, drop_path_rate=0.5, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(8, 10, 48)
    got, want = _run(cp.train(), x, seed=3), _run(plain.train(), x, seed=3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name, grad in got[2].items():
        torch.testing.assert_close(grad, want[2][name], msg=name)


@pytest.mark.parametrize('train, kwargs', [(False, {}), (True, dict(drop_path_rate=0.5))])
def test_num_queries_computes_the_first_tokens_only(train, kwargs):
    layer = TransformerEncoderLayer(**CFG, **kwargs).train(train)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(6, 10, 48)
    seen = []
    layer.ffn.layers[0][0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))

    def run(num_queries):
        layer.zero_grad()
        torch.manual_seed(1)
        out = layer(x, num_queries=num_queries)[:, :2]
        out.square().mean().backward()
        return out, {n: p.grad.clone() for n, p in layer.named_parameters()}

    want, want_grads = run(None)
    got, got_grads = run(2)
    torch.testing.assert_close(got, want)
    for name, grad in got_grads.items():
        torch.testing.assert_close(grad, want_grads[name], msg=name)
    assert seen == [10, 2]  # the FFN ran on 2 tokens, not 10
