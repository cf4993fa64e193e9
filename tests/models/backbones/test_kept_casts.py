"""The route of autocast inference on a GPU: the layer keeps its weights in the autocast dtype
(``FastTransformerEncoderLayer._forward_kept_casts``); forced on the CPU here, on the device
with ``-k device`` (``tools/analysis/gpu_check.py``)."""

import pytest
import torch

from .test_bf16_fast_path import BATCH, BF16, DEVICES, IMG, _autocast, _flat, _pair


@pytest.fixture
def kept_cast_calls(monkeypatch) -> list:
    """Force the route of autocast inference on a GPU (kept weight copies) on the CPU, with
    the CPU's own measures off; the ``num_queries`` of each call of the route."""
    from mmdeit.models.backbones import fast_transformer_layer as ftl

    calls = []
    real = ftl.FastTransformerEncoderLayer._forward_kept_casts

    def spy(layer, x, num_queries=None):
        calls.append(num_queries)
        return real(layer, x, num_queries)

    monkeypatch.setattr(ftl, '_keeps_casts', lambda x, layer: not layer.training)
    monkeypatch.setattr(ftl.FastTransformerEncoderLayer, '_forward_kept_casts', spy)
    monkeypatch.setattr(ftl.onednn, 'onednn_applies', lambda *a: False)
    monkeypatch.setattr(ftl, 'gemm_attention_applies', lambda *a: False)
    return calls


@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize(
    'kwargs', [{}, dict(qkv_bias=False), dict(layer_scale_init_value=0.1)], ids=str
)
def test_kept_casts_route_is_the_reference_within_bf16(kept_cast_calls, out_type, kwargs):
    """The GPU's autocast-inference route (forced here on the CPU) computes what autocast
    computes in the reference layers; with ``out_type='cls_token'`` its last layer computes
    only the cls/dist tokens."""
    fast, ref = _pair(out_type, **kwargs)
    x = torch.randn(BATCH, 3, IMG, IMG)
    with torch.no_grad(), _autocast():
        got, want = _flat(fast(x)), _flat(ref(x))
    queries = [None] * (len(fast.layers) - 1) + [2 if out_type == 'cls_token' else None]
    assert kept_cast_calls == queries
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)


def test_kept_weights_follow_the_weights():
    """The kept copies are made once, and again after an in-place change (an optimizer step,
    ``load_state_dict``), a change through ``.data`` plus a mode switch, ``.to()``."""
    layer = _pair()[0].layers[0]
    params = [layer.attn.qkv, layer.attn.proj, layer.ffn.layers[0][0], layer.ffn.layers[1]]
    params = [p for m in params for p in (m.weight, m.bias)]

    def check() -> tuple:
        kept = layer._kept_weights(torch.bfloat16)
        for k, p in zip(kept, params, strict=True):
            assert k.dtype == torch.bfloat16 and torch.equal(k, p.detach().bfloat16())
        return kept

    first = check()
    assert all(a is b for a, b in zip(first, check()))  # kept, not made again
    assert layer._kept_weights(torch.float16)[0].dtype == torch.float16  # per autocast dtype
    assert not any('kept' in key for key in layer.state_dict())  # not saved
    with torch.no_grad():
        params[0].mul_(1.5)  # in place, as an optimizer step
    check()
    for p in params:  # through .data: the version is unchanged
        p.data.mul_(0.5)
    layer.eval()  # a mode switch drops the copies (the validation loop calls it)
    check()
    layer.to(torch.float64).to(torch.float32)  # new storage
    check()


def test_kept_casts_route_of_a_model_built_under_inference_mode(kept_cast_calls):
    """Weights made under ``torch.inference_mode`` have no version: the route casts them at
    every call instead of keeping copies (it raised before: "Inference tensors do not track
    version counter")."""
    with torch.inference_mode():
        fast, ref = _pair()
        x = torch.randn(BATCH, 3, IMG, IMG)
        with _autocast():
            got, want = _flat(fast(x)), _flat(ref(x))
    assert kept_cast_calls and '_kept' not in fast.layers[0].__dict__
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('device', DEVICES[1:])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_inference_kept_casts_on_device(device, dtype):
    """On a GPU, autocast inference takes the kept-copies route (every layer) and gives the
    reference layers' numbers within the autocast dtype's rounding; training does not take it."""
    from mmdeit.models.backbones import fast_transformer_layer as ftl

    fast, ref = (m.to(device) for m in _pair())
    x = torch.randn(BATCH, 3, IMG, IMG, device=device)
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        got, want = _flat(fast(x)), _flat(ref(x))
        assert all(ftl._keeps_casts(x, layer) for layer in fast.layers)
        assert not ftl._keeps_casts(x, fast.layers[0].train())
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), **BF16)
