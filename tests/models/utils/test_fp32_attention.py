"""The fp32 attention kernel (``mmdeit/models/utils/fp32_attention.py``): SDPA's numbers within
fp32 rounding over shapes, strides and scales (and as close to an fp64 reference as SDPA), where
it applies and where not, the C++ checks, the model with it against the model without, and a
user's fp32 inference on a shipped DeiT config as a subprocess from a folder outside the
checkout.

On CPUs without AVX-512 BF16 the kernels are never built: the tests that need them skip there;
the ones about where it applies run everywhere.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import fp32_attention as fa

from .test_amx_attention import qkv_views
from .test_cpu_kernels import spy_kernels, user_run

needs_kernels = pytest.mark.skipif(not cpu_kernels.SUPPORTED, reason='no AVX-512 BF16')
#: heads of 64, the size the kernel takes (2 heads, 2 layers: small enough for the suite)
ARCH64 = dict(embed_dims=128, num_layers=2, num_heads=2, feedforward_channels=256)
# (B, h, n, N): the last queries a block of 6 (198, 197, 13, 578: 1 to 6 left over), of 12
# (20: 8 left over), none left (12), padded copies of 6 (2) and 12 (11), exactly 6 queries;
# keys in 1 vector (13, 1), 2 (32), an odd count >= 3 ending in 48 keys (198, 40, 33, 578), an
# even one (1024, the longest row); DeiT's 198 and 197 tokens, 384 px's 578
SHAPES = [
    (2, 3, 198, 198),
    (2, 2, 20, 33),
    (1, 2, 6, 32),
    (1, 6, 197, 197),
    (3, 2, 2, 198),
    (2, 2, 13, 13),
    (1, 2, 12, 12),
    (2, 3, 11, 40),
    (1, 2, 1, 1),
    (1, 1, 578, 578),
    (1, 1, 30, cpu_kernels.MAX_ROW),
]


@pytest.fixture
def fp32_on(monkeypatch):
    """The switches on and the kernels built (on a CPU with AVX-512 BF16 they should build)."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
    monkeypatch.setattr(fa, 'USE_FP32_ATTENTION', True)
    assert cpu_kernels.kernels() is not None, 'the CPU kernels did not build'


def _sdpa(q, k, v, scale):
    """SDPA, heads merged: (B, n, h*d)."""
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, h, n, d)
    B, h, n, d = out.shape
    return out.transpose(1, 2).reshape(B, n, h * d)


@needs_kernels
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('strided, scale', [(True, 0.125), (False, 0.125), (True, 0.1)])
def test_attention_is_sdpa_within_fp32_rounding(fp32_on, shape, strided, scale):
    torch.manual_seed(sum(shape))
    q, k, v = qkv_views(*shape, strided, torch.float32, 1.0)
    with torch.no_grad():
        assert fa.attention_applies(q, k, v, 0.0)
        got = fa.attention(q, k, v, scale)
        want = _sdpa(q, k, v, scale)
        exact = _sdpa(q.double(), k.double(), v.double(), scale)
    B, h, n, _ = shape
    assert got.shape == want.shape == (B, n, h * 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # as close to fp64 as SDPA's fp32 (a margin for the order of the sums)
    assert (got - exact).abs().max() <= 2 * (want - exact).abs().max() + 1e-6


@needs_kernels
def test_a_constant_row_and_large_scores(fp32_on):
    """Equal scores (a uniform softmax: the mean of v) and scores of thousands (exp of
    -thousands: 0, no overflow)."""
    q, k, v = qkv_views(2, 2, 33, 33, True, torch.float32, 1.0)
    q, k = q.clone(), k.clone()
    q[0, 0] = 0.0
    k[1] *= 400
    with torch.no_grad():
        got = fa.attention(q, k, v, 1.0)
        want = _sdpa(q, k, v, 1.0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    mean_v = v[0, 0].mean(0)  # (64,): every query of sample 0, head 0
    torch.testing.assert_close(got[0, :, :64], mean_v.expand(33, 64), rtol=0, atol=1e-6)


@needs_kernels
def test_where_it_applies(fp32_on, monkeypatch):
    q, k, v = qkv_views(2, 2, 20, 20, True, torch.float32, 1.0)
    with torch.no_grad():
        assert fa.attention_applies(q, k, v, 0.0)
        # not: bf16, another head size, dropout, a key count out of range, a strided last dim
        assert not fa.attention_applies(*(t.bfloat16() for t in (q, k, v)), 0.0)
        assert not fa.attention_applies(q[..., :32], k[..., :32], v[..., :32], 0.0)
        assert not fa.attention_applies(q, k, v, 0.1)
        assert not fa.attention_applies(q, k[:, :, :5], v, 0.0)
        assert not fa.attention_applies(q.transpose(-1, -2), k, v, 0.0)
        big = torch.zeros(1, 1, cpu_kernels.MAX_ROW + 1, 64)
        assert not fa.attention_applies(big[:, :, :2], big, big, 0.0)
    assert not fa.attention_applies(q, k, v, 0.0)  # autograd on: SDPA (no backward here)
    with torch.no_grad():
        monkeypatch.setattr(fa, 'USE_FP32_ATTENTION', False)
        assert not fa.attention_applies(q, k, v, 0.0)
        monkeypatch.setattr(fa, 'USE_FP32_ATTENTION', True)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
        assert not fa.attention_applies(q, k, v, 0.0)


def test_nothing_applies_with_the_kernels_off(monkeypatch):
    """With ``MMDEIT_CPU_KERNELS=0`` (or on a CPU without AVX-512 BF16) SDPA runs."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    q, k, v = qkv_views(1, 2, 8, 8, True, torch.float32, 1.0)
    with torch.no_grad():
        assert not fa.attention_applies(q, k, v, 0.0)


@needs_kernels
def test_the_kernel_refuses_what_it_cannot_take(fp32_on):
    """The C++ checks name what is wrong."""
    built = cpu_kernels.kernels()
    q, k, v = qkv_views(1, 2, 8, 8, True, torch.float32, 1.0)
    with pytest.raises(RuntimeError, match='heads of 64'):
        built.attention_fp32(q[..., :32], k[..., :32], v[..., :32], 1.0)
    with pytest.raises(RuntimeError, match='fp32 q, k and v'):
        built.attention_fp32(q.bfloat16(), k, v, 1.0)
    spaced = torch.randn(1, 2, 8, 128)[..., ::2]  # (1, 2, 8, 64), last stride 2
    with pytest.raises(RuntimeError, match='the last dim contiguous'):
        built.attention_fp32(spaced, k, v, 1.0)
    with pytest.raises(RuntimeError, match=f'1 to {cpu_kernels.MAX_ROW} keys'):
        big = torch.zeros(1, 1, cpu_kernels.MAX_ROW + 1, 64)
        built.attention_fp32(big[:, :, :2], big, big, 1.0)


def _backbone(out_type: str) -> nn.Module:
    torch.manual_seed(0)
    model = DistilledVisionTransformer(arch=ARCH64, img_size=32, patch_size=8, out_type=out_type)
    model.init_weights()
    return model.eval()


@needs_kernels
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('batch', [1, 3])
def test_model_with_it_is_the_model_without(fp32_on, monkeypatch, out_type, batch):
    """fp32 inference of the fast path with the kernel and with SDPA: within fp32 rounding; the
    kernel ran once a layer (the last layer's first two queries with ``cls_token``)."""
    model = _backbone(out_type)
    x = torch.randn(batch, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    with torch.no_grad():
        got = model(x)[-1]
        with_kernel = list(ran)
        monkeypatch.setattr(fa, 'USE_FP32_ATTENTION', False)
        want = model(x)[-1]
    assert with_kernel.count('attention_fp32') == ARCH64['num_layers']
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


USER_SCRIPT = """
import json, sys
import numpy as np, torch
from mmdeit.apis import inference_model, init_model
from mmdeit.models.utils import cpu_kernels, fp32_attention

calls = []
if cpu_kernels.kernels() is not None:  # count the kernel's calls
    attention = fp32_attention.attention
    fp32_attention.attention = lambda *a: calls.append(1) or attention(*a)
torch.manual_seed(0)
model = init_model('my_config.py')
rng = np.random.default_rng(0)
side = int(sys.argv[1])
images = [rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8) for _ in range(2)]
out = inference_model(model, images)
print(json.dumps(dict(calls=len(calls), scores=[o['pred_scores'].tolist() for o in out])))
"""


def test_user_fp32_inference_of_a_shipped_deit_config(tmp_path):
    """As a user runs it: DeiT-Ti distilled through ``init_model``/``inference_model`` in fp32,
    in a subprocess from a temp folder; on a CPU with AVX-512 BF16 the kernel runs the attention
    of all 12 layers, with ``MMDEIT_CPU_KERNELS=0`` SDPA does; the scores agree within fp32
    rounding."""
    base = 'mmdeit::deit/deit-tiny-distilled_8xb128_in1k.py'  # heads of 64
    on, off = (user_run(tmp_path, setting, base, 240, USER_SCRIPT) for setting in ('1', '0'))
    assert on['calls'] == (12 if cpu_kernels.SUPPORTED else 0) and off['calls'] == 0
    got, want = torch.tensor(on['scores']), torch.tensor(off['scores'])
    assert got.shape == want.shape == (2, 1000)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
