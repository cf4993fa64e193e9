"""The fast path in bf16 (bf16 autocast, and a model cast to bf16): it takes its oneDNN GEMMs
(on CPUs with native bf16), computes what the reference layers compute there within bf16's
rounding, and in fp32 nothing changed."""

import copy

import pytest
import torch

from mmdeit.models.backbones import DistilledVisionTransformer, VisionTransformer
from mmdeit.models.utils import amx_linear, onednn_linear

from ...conftest import TINY_ARCH

BATCH = 4
IMG = 32
BF16 = dict(rtol=0.05, atol=0.05)  # a few bf16 roundings (8 bits of mantissa) per layer
NEEDS_BF16 = pytest.mark.skipif(
    not onednn_linear.BF16_SUPPORTED, reason='no native bf16 GEMMs in oneDNN on this CPU'
)
OUT_TYPES = VisionTransformer.OUT_TYPES


def _pair(out_type: str = 'cls_token', cls=DistilledVisionTransformer, **kwargs):
    """A fast and a reference backbone with the same (non-trivial) weights, in eval mode;
    ``kwargs`` go to both."""
    torch.manual_seed(0)
    kwargs.update(arch=TINY_ARCH, img_size=IMG, patch_size=8, out_type=out_type)
    fast = cls(**kwargs)
    with torch.no_grad():
        for name in ('pos_embed', *fast.extra_tokens):
            getattr(fast, name).normal_(std=0.02)
        for module in fast.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(std=0.02)
    ref = cls(**kwargs, fast_path=False)
    ref.load_state_dict(fast.state_dict(), strict=True)
    return fast.eval(), ref.eval()


def _flat(outs) -> list:
    return [t for out in outs for t in (out if isinstance(out, tuple) else (out,))]


def _autocast():
    return torch.autocast('cpu', dtype=torch.bfloat16)


@pytest.fixture
def onednn_calls(monkeypatch) -> list:
    """The output dtype of every oneDNN GEMM (the function is spied on, still called); the AMX
    linear off (it takes them on AMX CPUs: ``test_amx_linear.py``)."""
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)
    calls = []
    real = onednn_linear.onednn_linear

    def spy(x, linear, gelu=None, rows=slice(None), scale_rows=None):
        out = real(x, linear, gelu, rows, scale_rows)
        calls.append(out.dtype)
        return out

    monkeypatch.setattr(onednn_linear, 'onednn_linear', spy)
    return calls


@pytest.mark.parametrize('cls', [DistilledVisionTransformer, VisionTransformer])
@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_autocast_inference_is_the_reference_within_bf16(cls, out_type):
    fast, ref = _pair(out_type, cls)
    x = torch.randn(BATCH, 3, IMG, IMG)
    with torch.inference_mode():
        fp32 = _flat(ref(x))
        with _autocast():
            got, want = _flat(fast(x)), _flat(ref(x))
    for g, w, exact in zip(got, want, fp32, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        torch.testing.assert_close(g.float(), w.float(), **BF16)
        torch.testing.assert_close(g.float(), exact, **BF16)


@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_bf16_model_inference_is_the_reference_within_bf16(out_type):
    fast, ref = _pair(out_type)
    x = torch.randn(BATCH, 3, IMG, IMG)
    with torch.inference_mode():
        fp32 = _flat(ref(x))
        got = _flat(copy.deepcopy(fast).bfloat16()(x.bfloat16()))
        want = _flat(copy.deepcopy(ref).bfloat16()(x.bfloat16()))
    for g, w, exact in zip(got, want, fp32, strict=True):
        assert g.dtype == w.dtype == torch.bfloat16
        torch.testing.assert_close(g.float(), w.float(), **BF16)
        torch.testing.assert_close(g.float(), exact, rtol=0.1, atol=0.1)  # a bf16 stream


@NEEDS_BF16
@pytest.mark.parametrize('cast', [False, True], ids=['autocast', 'bf16 model'])
def test_bf16_inference_runs_every_linear_through_onednn(onednn_calls, cast):
    fast, ref = _pair()
    x = torch.randn(BATCH, 3, IMG, IMG)
    if cast:
        fast, x = fast.bfloat16(), x.bfloat16()
    with torch.inference_mode(), _autocast() if not cast else torch.autocast('cpu', enabled=False):
        fast(x)
    layers = TINY_ARCH['num_layers']
    # 4 per layer; the last layer's qkv is two (its queries of the cls/dist tokens only)
    assert onednn_calls == [torch.bfloat16] * (4 * layers + 1)
    onednn_calls.clear()
    with torch.no_grad(), _autocast():
        ref(x)  # the reference never
    with _autocast():
        fast.train()(x.float())  # with autograd: the ordinary (autocast) ops
    assert onednn_calls == []


@pytest.mark.parametrize('fp32_onednn', [False, True])  # AVX2-only / AVX-512 CPUs' choice
def test_fp32_inference_is_unchanged(onednn_calls, monkeypatch, fp32_onednn):
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', fp32_onednn and onednn_linear._HAS_OP)
    fast, ref = _pair()
    x = torch.randn(BATCH, 3, IMG, IMG)
    with torch.inference_mode():
        got, want = _flat(fast(x)), _flat(ref(x))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert set(onednn_calls) == ({torch.float32} if onednn_linear.FP32_ONEDNN else set())


@NEEDS_BF16
def test_bf16_weight_copies_follow_the_weights(monkeypatch):
    """The bf16 copies autocast inference keeps are remade when the weights change: in place
    (an optimizer step, ``load_state_dict``), through ``.data`` plus a mode switch, ``.to()``."""
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)  # oneDNN's path (test_amx_linear.py)
    fast, ref = _pair()
    x = torch.randn(BATCH, 3, IMG, IMG)

    def check():
        with torch.inference_mode(), _autocast():
            got, want = _flat(fast(x)), _flat(ref(x))
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.float(), w.float(), **BF16)

    check()
    attn = fast.layers[0].attn
    kept = onednn_linear._PACKED if onednn_linear.PREPACK else onednn_linear._COPIES
    assert kept[attn.proj.weight][1].dtype == torch.bfloat16  # kept by the parameter
    # qkv's copy has q's rows scaled by 1/sqrt(d) (gemm_attention.q_scale_folds)
    scaled = onednn_linear._PACKED_SCALED if onednn_linear.PREPACK else onednn_linear._SCALED
    assert scaled[attn.qkv.weight][1].dtype == torch.bfloat16
    assert not any('bf16' in key for key in fast.state_dict())  # not saved
    with torch.no_grad():  # in place, as an optimizer step
        for p in fast.parameters():
            p.mul_(1.5)
    ref.load_state_dict(fast.state_dict())
    check()
    for p in fast.parameters():  # through .data: the version is unchanged
        p.data.mul_(0.5)
    fast.eval()  # a mode switch drops the copies (the validation loop calls it)
    ref.load_state_dict(fast.state_dict())
    check()
    fast.to(torch.float64).to(torch.float32)  # new storage
    check()


def test_onednn_applies_where_it_is_exact_or_bf16():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    fp32, bf16 = onednn_linear.FP32_ONEDNN, onednn_linear.BF16_SUPPORTED
    with torch.no_grad():
        assert onednn_linear.onednn_applies(x, linear) is fp32
        assert onednn_linear.onednn_applies(x.bfloat16(), linear) is False  # mixed, no autocast
        with _autocast():
            assert onednn_linear.onednn_applies(x, linear) is bf16
        with torch.autocast('cpu', dtype=torch.float16):
            assert onednn_linear.onednn_applies(x, linear) is False
        assert onednn_linear.onednn_applies(x.bfloat16(), linear.bfloat16()) is bf16
    with _autocast():  # autograd on
        assert onednn_linear.onednn_applies(x, linear) is False


# The parity checks per device: ``tools/analysis/gpu_check.py`` runs them with ``-k cuda``.
DEVICES = [
    'cpu',
    pytest.param(
        'cuda',
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device'),
    ),
]


@pytest.fixture
def no_tf32():
    """fp32 GEMMs and convolutions in fp32 on a GPU (TF32 would round to 10 bits)."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield
    torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize('device', DEVICES)
def test_fp32_parity_with_mmpretrain_on_device(device, no_tf32):
    from mmpretrain.models.backbones import DistilledVisionTransformer as Theirs

    fast, ref = _pair()
    theirs = Theirs(arch=TINY_ARCH, img_size=IMG, patch_size=8)
    theirs.load_state_dict(fast.state_dict(), strict=True)
    theirs.eval()  # mmpretrain's train() returns None
    x = torch.randn(BATCH, 3, IMG, IMG, device=device)
    with torch.inference_mode():
        want = _flat(theirs.to(device)(x))  # .to() returns the module
        for model in (fast, ref):
            for g, w in zip(_flat(model.to(device)(x)), want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _training_step_pair(device: str, drop_rate: float, bf16: bool = False) -> list:
    """One training step of the fast and of the reference backbone of :func:`_pair`, each with
    stochastic depth ``drop_rate`` on ``device``, the same input and seed, under bf16 autocast
    if ``bf16`` (default False): ``[(outputs, gradients) of fast, (...) of reference]``."""
    results = []
    for model in _pair():
        model = _drop_path(model, drop_rate).to(device).train()
        x = torch.randn(BATCH, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
        torch.manual_seed(1)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            outs = _flat(model(x.to(device)))
            loss = sum(o.float().square().mean() for o in outs)
        loss.backward()
        results.append((outs, [p.grad for p in model.parameters()]))
    return results


@pytest.mark.parametrize('device', DEVICES)
def test_training_fast_equals_reference_on_device(device, no_tf32):
    """Stochastic depth 0.5: on CUDA the fast path multiplies by the mask (no host sync), on
    the CPU it skips the dropped samples; either way the reference's numbers, same draw."""
    (got, got_grads), (want, want_grads) = _training_step_pair(device, 0.5)
    for g, w in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('device', DEVICES)
def test_bf16_autocast_is_fp32_within_bf16_on_device(device):
    fast, ref = (m.to(device) for m in _pair())
    x = torch.randn(BATCH, 3, IMG, IMG, device=device)
    with torch.inference_mode():
        exact = _flat(ref(x))
        with torch.autocast(device, dtype=torch.bfloat16):
            got, want = _flat(fast(x)), _flat(ref(x))
    for g, w, e in zip(got, want, exact, strict=True):
        torch.testing.assert_close(g.float(), w.float(), **BF16)
        torch.testing.assert_close(g.float(), e, **BF16)


def _drop_path(model, rate: float):
    """Set every layer's stochastic depth to ``rate`` (mmcv's DropPath modules)."""
    from mmcv.cnn.bricks.drop import DropPath

    for layer in model.layers:
        layer.attn.out_drop = DropPath(rate)
        layer.ffn.dropout_layer = DropPath(rate)
    return model


@pytest.mark.parametrize('device', DEVICES)
def test_bf16_autocast_training_fast_equals_reference_on_device(device):
    """The training step of the ``--amp`` recipes: stochastic depth, bf16 autocast, gradients.
    On CUDA the layers without ``num_queries`` run the reference's own ``_forward``."""
    (got, got_grads), (want, want_grads) = _training_step_pair(device, 0.25, bf16=True)
    assert all(g is not None for g in got_grads)
    for g, w in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(g.float(), w.float(), **BF16)


def test_without_measures_the_fast_layer_runs_the_reference(monkeypatch):
    """Where no measure applies (bf16 autocast on a GPU: ``_measures_apply`` is False), the
    fast layers run the reference's ``_forward`` (here on the CPU, with the condition forced);
    the last layer still computes only its ``num_queries`` tokens (its own bf16 rounding)."""
    from mmdeit.models.backbones import fast_transformer_layer as ftl

    fast, ref = _pair()
    x = torch.randn(BATCH, 3, IMG, IMG)
    calls = []
    monkeypatch.setattr(ftl, '_measures_apply', lambda t: calls.append(t.shape) or False)
    monkeypatch.setattr(ftl.onednn, 'onednn_applies', lambda *a: False)  # as off the CPU
    monkeypatch.setattr(ftl, 'gemm_attention_applies', lambda *a: False)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got, want = _flat(fast(x)), _flat(ref(x))
    assert len(calls) == len(fast.layers) - 1  # the last layer computes its tokens only
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)  # the last layer's rounding


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_training_q_rows_from_the_whole_qkv_are_the_reference(monkeypatch, precision):
    """The GPU training route of the last layer (forced here on the CPU): q's rows sliced from
    one qkv GEMM of all tokens; outputs and every gradient are the reference's (fp32: to
    rounding; bf16 autocast: within bf16), with stochastic depth."""
    from mmdeit.models.backbones import fast_transformer_layer as ftl

    calls = []
    monkeypatch.setattr(ftl, '_q_rows_from_whole', lambda t: calls.append(t.shape) or True)
    monkeypatch.setattr(ftl, '_measures_apply', lambda t: not ftl._autocast_on(t))
    monkeypatch.setattr(ftl.onednn, 'onednn_applies', lambda *a: False)  # as off the CPU
    monkeypatch.setattr(ftl, 'gemm_attention_applies', lambda *a: False)
    monkeypatch.setattr(ftl, 'skips_dropped_samples', lambda t: False)
    results = _training_step_pair('cpu', 0.25, bf16=precision == 'bf16')
    assert len(calls) == 1  # the last layer's, once
    (got, got_grads), (want, want_grads) = results
    assert all(g is not None for g in got_grads)
    tol = BF16 if precision == 'bf16' else dict(rtol=1e-5, atol=1e-6)
    for g, w in zip(got + got_grads, want + want_grads, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), **tol)
