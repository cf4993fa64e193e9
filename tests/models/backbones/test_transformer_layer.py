"""The encoder layer, reference and fast: mmpretrain's numbers, and the fast one does less work."""

import pytest
import torch
from mmpretrain.models.backbones.vision_transformer import (
    TransformerEncoderLayer as MMPretrainLayer,
)

from mmdeit.models.backbones import fast_transformer_layer
from mmdeit.models.backbones.fast_transformer_layer import FastFFN, FastTransformerEncoderLayer
from mmdeit.models.backbones.transformer_layer import TransformerEncoderLayer
from mmdeit.models.utils import onednn_linear

CFG = dict(embed_dims=48, num_heads=3, feedforward_channels=96)
LAYERS = {False: TransformerEncoderLayer, True: FastTransformerEncoderLayer}
KWARGS = [
    dict(),  # fast: shortcuts summed inside the GEMMs
    dict(drop_path_rate=0.5),  # fast: dropped samples skipped, same random stream
    dict(drop_rate=0.3, layer_scale_init_value=0.1),  # fast: the formula as written
]


def _layer(fast_path, **kwargs):
    torch.manual_seed(0)
    layer = LAYERS[fast_path](**CFG, norm_cfg=dict(type='LN', eps=1e-6), **kwargs)
    for p in layer.parameters():  # non-trivial values everywhere (biases, norms, LayerScale)
        torch.nn.init.normal_(p, std=0.2)
    return layer


def _like(layer, cls, **kwargs):
    """A layer of class ``cls`` holding ``layer``'s weights (strict load: same keys)."""
    other = cls(**CFG, norm_cfg=dict(type='LN', eps=1e-6), **kwargs)
    other.load_state_dict(layer.state_dict(), strict=True)
    return other


def _run(layer, x, seed=0, **kwargs):
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    out = layer(x, **kwargs)
    out.square().mean().backward()
    return out, x.grad, {n: p.grad for n, p in layer.named_parameters()}


def _assert_same_run(got, want, **tol):
    torch.testing.assert_close(got[0], want[0], **tol)
    torch.testing.assert_close(got[1], want[1], **tol)
    assert got[2].keys() == want[2].keys()
    for name, grad in got[2].items():
        torch.testing.assert_close(grad, want[2][name], msg=name, **tol)


@pytest.mark.parametrize('fast_path', [False, True])
@pytest.mark.parametrize('kwargs', KWARGS)
def test_train_mode_matches_mmpretrain(fast_path, kwargs):
    ours = _layer(fast_path, **kwargs)
    theirs = _like(ours, MMPretrainLayer, **kwargs)
    x = torch.randn(8, 10, 48)
    _assert_same_run(_run(ours.train(), x), _run(theirs.train(), x))


@pytest.mark.parametrize('fast_path', [False, True])
@pytest.mark.parametrize('grad_mode', [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_inference_matches_mmpretrain_and_leaves_the_input_alone(fast_path, grad_mode):
    ours = _layer(fast_path).eval()
    theirs = _like(ours, MMPretrainLayer).eval()
    x = torch.randn(2, 10, 48)
    x_before = x.clone()
    with grad_mode():
        got = ours(x)
        want = theirs(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kwargs', KWARGS)
@pytest.mark.parametrize('seed', [0, 3])
def test_fast_equals_reference_in_training(kwargs, seed):
    """Outputs and gradients, drop path and dropout drawn from the same seed."""
    fast = _layer(True, **kwargs)
    ref = _like(fast, TransformerEncoderLayer, **kwargs)
    x = torch.randn(8, 10, 48)
    _assert_same_run(_run(fast.train(), x, seed), _run(ref.train(), x, seed))


@pytest.mark.parametrize('fast_path', [False, True])
@pytest.mark.parametrize(
    'train, kwargs',
    [
        (False, {}),
        (True, dict(drop_path_rate=0.5)),
        (True, dict(drop_path_rate=0.5, layer_scale_init_value=0.1)),
    ],
)
def test_num_queries_computes_the_first_tokens_only(fast_path, train, kwargs):
    """Either layer with ``num_queries=2``: the first 2 tokens of the reference layer's output
    on all tokens, and the same gradients (stochastic depth drawn from the same seed: one draw
    per sample); its FFN runs on those 2 tokens only."""
    layer = _layer(fast_path, **kwargs).train(train)
    ref = _like(layer, TransformerEncoderLayer, **kwargs).train(train)
    x = torch.randn(6, 10, 48)
    seen = []
    layer.ffn.layers[0][0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))

    def run(module, **kw):
        module.zero_grad()
        torch.manual_seed(1)
        x_grad = x.clone().requires_grad_(True)
        out = module(x_grad, **kw)[:, :2]
        out.square().mean().backward()
        return out, x_grad.grad, {n: p.grad.clone() for n, p in module.named_parameters()}

    want = run(ref)
    got = run(layer, num_queries=2)
    assert got[0].shape == (6, 2, 48)
    _assert_same_run(got, want)
    assert seen == [2]  # the FFN ran on 2 tokens, not 10


@pytest.mark.parametrize('fast_path', [False, True])
def test_dropped_samples_are_not_computed_on_the_fast_path_only(fast_path):
    layer = _layer(fast_path, drop_path_rate=0.5).train()
    batches = []
    layer.attn.qkv.register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    layer.ffn.layers[1].register_forward_pre_hook(lambda m, a: batches.append(a[0].shape[0]))
    torch.manual_seed(0)
    layer(torch.randn(16, 10, 48))
    assert len(batches) == 2
    if fast_path:
        assert all(b < 16 for b in batches), batches  # the dropped rows never entered a GEMM
    else:
        assert batches == [16, 16]


@pytest.mark.parametrize('kwargs', [dict(), dict(drop_path_rate=0.5)])
@pytest.mark.parametrize('train', [False, True])
def test_fast_is_close_to_reference_under_bf16_autocast(kwargs, train):
    fast = _layer(True, **kwargs).train(train)
    ref = _like(fast, TransformerEncoderLayer, **kwargs).train(train)
    x = torch.randn(8, 10, 48)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, want = _run(fast, x), _run(ref, x)
    assert got[0].dtype == want[0].dtype == torch.float32  # the stream stays fp32
    _assert_same_run(got, want, rtol=0.05, atol=0.05)


@pytest.fixture
def onednn_calls(monkeypatch) -> list:
    """Records the layer of every oneDNN GEMM (the function is spied on, still called)."""
    calls = []
    real = onednn_linear.onednn_linear

    def spy(x, linear, gelu=None, rows=slice(None), scale_rows=None):
        calls.append((linear, gelu))
        return real(x, linear, gelu, rows, scale_rows)

    monkeypatch.setattr(onednn_linear, 'onednn_linear', spy)
    return calls


@pytest.mark.skipif(not onednn_linear._HAS_OP, reason='PyTorch built without oneDNN')
def test_onednn_runs_only_in_fp32_inference_of_the_fast_path(onednn_calls, monkeypatch):
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', True)  # as on an AVX-512 CPU
    fast = _layer(True).eval()
    ref = _like(fast, TransformerEncoderLayer).eval()
    x = torch.randn(2, 10, 48)
    with torch.inference_mode():
        got, want = fast(x), ref(x)
    ffn = fast.ffn.layers
    attn = fast.attn
    assert [(m, g) for m, g in onednn_calls] == [
        (attn.qkv, None),
        (attn.proj, None),
        (ffn[0][0], 'none'),  # the erf GELU fused into the first FFN GEMM
        (ffn[1], None),
    ]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    onednn_calls.clear()
    ref(x)  # the reference never
    fast(x.requires_grad_(True)).sum().backward()  # no backward for oneDNN's op
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        fast(x)  # not under fp16 autocast (bf16 autocast: test_bf16_fast_path.py)
    assert onednn_calls == []


def test_fp32_onednn_is_chosen_by_the_cpus_kernels():
    """oneDNN for fp32 where ATen's kernels are AVX-512; the ordinary ops on AVX2-only CPUs."""
    avx512 = torch.backends.cpu.get_cpu_capability() == 'AVX512'
    assert onednn_linear.FP32_ONEDNN is (onednn_linear._HAS_OP and avx512)


def test_fp32_inference_without_onednn_takes_the_ordinary_ops(onednn_calls, monkeypatch):
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', False)  # as on an AVX2-only CPU
    fast = _layer(True).eval()
    ref = _like(fast, TransformerEncoderLayer).eval()
    x = torch.randn(2, 10, 48)
    with torch.inference_mode():
        got, want = fast(x), ref(x)
    assert onednn_calls == []
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fast_ffn_sums_into_a_temporary_shortcut_without_autograd(monkeypatch):
    monkeypatch.setattr(onednn_linear, '_HAS_OP', False)  # the addmm_ path (no oneDNN)
    ffn = FastFFN(48, 96).eval()
    x, shortcut = torch.randn(2, 10, 48), torch.randn(2, 10, 48)
    with torch.no_grad():
        want = shortcut + ffn(x)
        scratch = shortcut.clone()
        got = ffn.add_branch(scratch, x, inplace=True)
    torch.testing.assert_close(got, want)
    assert got.data_ptr() == scratch.data_ptr()  # written in place, no new tensor
    # With autograd on, inplace is ignored: the shortcut may be needed for backward.
    scratch = shortcut.clone().requires_grad_(True)
    got = ffn.add_branch(scratch, x, inplace=True)
    assert got.data_ptr() != scratch.data_ptr()
    torch.testing.assert_close(got, want)
    assert torch.equal(scratch, shortcut)


@pytest.mark.parametrize('fast_path', [False, True])
def test_with_cp_and_drop_path_keep_outputs_and_gradients(fast_path):
    plain = _layer(fast_path, drop_path_rate=0.5)
    cp = _like(plain, LAYERS[fast_path], drop_path_rate=0.5, with_cp=True)
    x = torch.randn(8, 10, 48)
    got, want = _run(cp.train(), x, seed=3), _run(plain.train(), x, seed=3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name, grad in got[2].items():
        torch.testing.assert_close(grad, want[2][name], msg=name)


def test_fast_layer_overrides_hooks_only():
    """The fast classes are the reference ones with hooks replaced: same modules, same keys."""
    fast, ref = _layer(True), _layer(False)
    assert isinstance(fast, TransformerEncoderLayer)
    assert fast.state_dict().keys() == ref.state_dict().keys()
    assert [n for n, _ in fast.named_modules()] == [n for n, _ in ref.named_modules()]
    assert fast_transformer_layer.FastMultiheadAttention.forward is type(ref.attn).forward
    assert FastFFN.forward is type(ref.ffn).forward
