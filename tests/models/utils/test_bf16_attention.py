"""The bf16 attention in ``vdpbf16ps`` register blocks (``mmdeit/models/utils/bf16_attention.py``):
the GEMM attention's bits over shapes, strides and scales, where it applies and where not, the
model with it against the model without, and a user's bf16 inference on a shipped DeiT config as
a subprocess from a folder outside the checkout.

Where the kernels build (AVX-512 BF16). On an AMX CPU the tile-unit kernel takes the model's
attention; there this kernel is called directly (switch the tile unit off to make it run), and
the GEMM attention's ``bmm`` runs on the tile unit, whose sums may round otherwise: within one
bf16 unit of it there, the same bits elsewhere.
"""

import pytest
import torch

from mmdeit.models.utils import amx_attention as amx
from mmdeit.models.utils import bf16_attention, cpu_kernels
from mmdeit.models.utils import gemm_attention as ga

from .test_amx_attention import ARCH64, SHAPES, _backbone, qkv_views
from .test_cpu_kernels import _within_one_bf16_unit, spy_kernels, user_run

needs_kernels = pytest.mark.skipif(not cpu_kernels.SUPPORTED, reason='no AVX-512 BF16')


@pytest.fixture
def kernel_on(monkeypatch):
    """The kernels built and switched on, this attention on, the tile unit's off."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
    monkeypatch.setattr(bf16_attention, 'USE_BF16_ATTENTION', True)
    monkeypatch.setattr(amx, 'USE_AMX_ATTENTION', False)
    assert cpu_kernels.kernels() is not None, 'the CPU kernels did not build'


def _gemm_form(monkeypatch, q, k, v, scale):
    """The GEMM attention: two bmm and cpu_kernels' softmax."""
    with monkeypatch.context() as m:
        m.setattr(bf16_attention, 'USE_BF16_ATTENTION', False)
        return ga._gemm_attention(q, k, v, scale)


def _assert_gemm_bits(got: torch.Tensor, want: torch.Tensor, keys: int = 0) -> None:
    """The same bits as the GEMM attention. Over 512 keys oneDNN's ``bmm`` sums P v in blocks
    of keys: there but in 1 of 1,000 elements, and by one bf16 unit. On an AMX CPU (the ``bmm``
    on the tile unit, whose sums may round otherwise) within 2 % of the largest value: what a
    wrong packing or block would miss by far."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if amx.AMX_SUPPORTED:
        scale = want.float().abs().max().item()
        torch.testing.assert_close(got.float(), want.float(), rtol=0.02, atol=0.02 * scale)
    elif keys > 512:
        _within_one_bf16_unit(got, want, share=1e-3)
    else:
        assert torch.equal(got, want)


@needs_kernels
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('strided, scale', [(True, 1.0), (True, 0.125), (False, 0.125)])
def test_attention_is_the_gemm_attentions_bits(kernel_on, monkeypatch, shape, strided, scale):
    torch.manual_seed(sum(shape))
    q, k, v = qkv_views(*shape, strided)
    with torch.no_grad():
        assert bf16_attention.attention_applies(q, k, v, scale)
        got = bf16_attention.attention(q, k, v, scale)
        want = _gemm_form(monkeypatch, q, k, v, scale)
    B, h, n, N = shape
    assert got.shape == (B, n, h * 64) and got.dtype == torch.bfloat16
    _assert_gemm_bits(got, want, N)


@needs_kernels
def test_a_constant_row_and_large_scores(kernel_on, monkeypatch):
    """Equal scores (a uniform softmax) and scores of a few hundred (exp of -hundreds: 0)."""
    q, k, v = qkv_views(2, 2, 33, 33, strided=True)
    q, k = q.clone(), k.clone()
    q[0, 0] = 0.0
    k[1] *= 40
    with torch.no_grad():
        got = bf16_attention.attention(q, k, v, 1.0)
        want = _gemm_form(monkeypatch, q, k, v, 1.0)
    _assert_gemm_bits(got, want)
    assert torch.isfinite(got.float()).all()


@needs_kernels
def test_where_it_applies(kernel_on, monkeypatch):
    q, k, v = qkv_views(2, 2, 20, 20, strided=True)
    with torch.no_grad():
        assert bf16_attention.attention_applies(q, k, v, 0.125)
        assert bf16_attention.takes_views(64)
        # not: another dtype, head size, scale, key count or a last dim with strides
        assert not bf16_attention.attention_applies(q.float(), k.float(), v.float(), 0.125)
        assert not bf16_attention.attention_applies(q[..., :32], k[..., :32], v[..., :32], 0.125)
        assert not bf16_attention.takes_views(32)
        assert not bf16_attention.attention_applies(q, k, v, 0.1)  # not a power of two
        assert not bf16_attention.attention_applies(q, k, v, 0.0)
        assert not bf16_attention.attention_applies(q, k[:, :, :5], v, 0.125)
        assert not bf16_attention.attention_applies(q.transpose(-1, -2), k, v, 0.125)
        big = torch.zeros(1, 1, cpu_kernels.MAX_ROW + 1, 64, dtype=torch.bfloat16)
        assert not bf16_attention.attention_applies(big[:, :, :2], big, big, 0.125)
    assert not bf16_attention.attention_applies(q, k, v, 0.125)  # not with autograd
    with torch.no_grad():
        monkeypatch.setattr(amx, 'takes_views', lambda head_dims: True)  # the tile unit's
        assert not bf16_attention.attention_applies(q, k, v, 0.125)
        assert bf16_attention.takes_views(64)  # by the tile unit's kernel
        monkeypatch.undo()
        monkeypatch.setattr(bf16_attention, 'USE_BF16_ATTENTION', False)
        assert not bf16_attention.attention_applies(q, k, v, 0.125)
        assert bf16_attention.takes_views(64) == amx.takes_views(64)
        monkeypatch.setattr(bf16_attention, 'USE_BF16_ATTENTION', True)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)  # both switches
        assert not bf16_attention.attention_applies(q, k, v, 0.125)
        assert not bf16_attention.takes_views(64)


def test_nothing_applies_without_the_kernels(monkeypatch):
    """With the kernels' switch off (as on a CPU without AVX-512 BF16) the GEMM attention runs
    and the heads are split: nothing reads them as views."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    q, k, v = qkv_views(1, 2, 8, 8, strided=True)
    with torch.no_grad():
        assert not bf16_attention.attention_applies(q, k, v, 0.125)
    assert not bf16_attention.takes_views(64)


@needs_kernels
def test_the_kernel_refuses_what_it_cannot_take(kernel_on):
    """The C++ checks name what is wrong."""
    built = cpu_kernels.kernels()
    q, k, v = qkv_views(1, 2, 8, 8, strided=True)
    with pytest.raises(RuntimeError, match='heads of 64'):
        built.attention_avx512_bf16(q[..., :32], k[..., :32], v[..., :32], 1.0)
    with pytest.raises(RuntimeError, match='bf16 q, k and v'):
        built.attention_avx512_bf16(q.float(), k, v, 1.0)
    spaced = torch.randn(1, 2, 8, 128).bfloat16()[..., ::2]  # (1, 2, 8, 64), last stride 2
    with pytest.raises(RuntimeError, match='the last dim contiguous'):
        built.attention_avx512_bf16(spaced, k, v, 1.0)
    with pytest.raises(RuntimeError, match='k and v \\(B, h, N, d\\)'):
        built.attention_avx512_bf16(q, k, v[:, :, :4], 1.0)
    big = torch.zeros(1, 1, cpu_kernels.MAX_ROW + 1, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=f'1 to {cpu_kernels.MAX_ROW} keys'):
        built.attention_avx512_bf16(big[:, :, :2], big, big, 1.0)


@needs_kernels
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('batch', [1, 3])
def test_model_with_it_is_the_model_without(kernel_on, monkeypatch, out_type, batch):
    """bf16 autocast inference of the fast path with this attention and with the GEMM attention:
    the same bits (on an AMX CPU within bf16's rounding); with it the heads are not copied (no
    split), no separate softmax runs, and it ran once a layer."""
    model = _backbone(out_type)
    x = torch.randn(batch, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = model(x)[-1]
        with_it = list(ran)
        ran.clear()
        bf16_attention.USE_BF16_ATTENTION = False
        want = model(x)[-1]
    assert with_it.count('attention_avx512_bf16') == ARCH64['num_layers']
    assert 'split_heads_bf16' not in with_it and 'softmax_bf16_' not in with_it
    assert 'attention_avx512_bf16' not in ran and 'split_heads_bf16' in ran
    for g, w in zip(got, want, strict=True):
        _assert_gemm_bits(g, w)


@needs_kernels
def test_compiled_model_takes_the_views_and_gives_eagers_numbers(kernel_on, monkeypatch):
    """Compiled bf16 inference (default mode): no split op in the graph (the heads go to the
    attention op as views), the op runs the kernel at run time, the numbers are eager's."""
    from .test_cpu_kernels import _graph_ops, compiled_and_eager

    model, x = _backbone(), torch.randn(2, 3, 32, 32)
    ops = _graph_ops(model, x)
    assert 'mmdeit.gemm_attention' in ops and 'mmdeit.split_heads_bf16' not in ops
    calls, kernel = [], bf16_attention.attention
    monkeypatch.setattr(bf16_attention, 'attention', lambda *a: calls.append(1) or kernel(*a))
    got, want = compiled_and_eager(model, x)
    assert len(calls) == 2 * ARCH64['num_layers']  # eager's and the compiled graph's
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
    monkeypatch.setattr(bf16_attention, 'USE_BF16_ATTENTION', False)
    assert 'mmdeit.split_heads_bf16' in _graph_ops(model, x)


USER_SCRIPT = """
import json, sys
import numpy as np, torch
from mmdeit.apis import inference_model, init_model
from mmdeit.models.utils import amx_attention, bf16_attention

torch.manual_seed(0)
model = init_model('my_config.py')
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (240, 248, 3), dtype=np.uint8) for _ in range(2)]
calls, kernel = [], bf16_attention.attention
bf16_attention.attention = lambda *args: calls.append(1) or kernel(*args)
amx_attention.USE_AMX_ATTENTION = False  # on an AMX CPU the tile unit's would take it
scores = {}
for on in (True, False):
    bf16_attention.USE_BF16_ATTENTION = on
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = inference_model(model, images)
    scores[on] = [o['pred_scores'].tolist() for o in out]
print(json.dumps(dict(calls=len(calls), on=scores[True], off=scores[False])))
"""


def test_user_bf16_inference_of_a_shipped_deit_config(tmp_path):
    """As a user runs it: DeiT-Ti distilled (heads of 64, 12 layers) through ``init_model``/
    ``inference_model`` under bf16 autocast, in a subprocess from a temp folder, with this
    attention and without: it ran in every layer where the kernels build, and the scores are
    the GEMM attention's bits (within bf16's rounding where the tile unit computes the GEMM
    attention's products, which may round otherwise)."""
    run = user_run(
        tmp_path, '1', 'mmdeit::deit/deit-tiny-distilled_8xb128_in1k.py', script=USER_SCRIPT
    )
    assert run['calls'] == (12 if cpu_kernels.SUPPORTED else 0)
    got, want = torch.tensor(run['on']), torch.tensor(run['off'])
    assert got.shape == want.shape == (2, 1000)
    if amx.AMX_SUPPORTED:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
    else:
        assert torch.equal(got, want)
