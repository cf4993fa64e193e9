"""The attention on the AMX tile unit (``mmdeit/models/utils/amx_attention.py``): bit for bit the
GEMM attention it replaces over shapes, strides and scales, where it applies and where not, the
model with it against the model without, compiled and eager, and a user's bf16 inference on a
shipped DeiT config as a subprocess from a folder outside the checkout.

On CPUs without AMX it is never built or run: the tests that need it skip there; the ones about
where it applies run everywhere.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import amx_attention as amx
from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import gemm_attention as ga

from .test_cpu_kernels import spy_kernels, user_run

needs_amx = pytest.mark.skipif(not amx.AMX_SUPPORTED, reason='no AMX tile unit')
#: heads of 64, the size the kernel takes (2 heads, 2 layers: small enough for the suite)
ARCH64 = dict(embed_dims=128, num_layers=2, num_heads=2, feedforward_channels=256)


def qkv_views(
    B: int, h: int, n: int, N: int, strided: bool, dtype=torch.bfloat16, spread: float = 3.0
):
    """q (B, h, n, 64), k and v (B, h, N, 64) in ``dtype`` (default bf16), standard normal
    values times ``spread`` (default 3): views of one (B, N, 3*h*64) GEMM output as the model
    has them, or contiguous copies."""
    qkv = (torch.randn(B, N, 3 * h * 64) * spread).to(dtype)
    q, k, v = qkv.reshape(B, N, 3, h, 64).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, 64)
    q = q[:, :, :n]  # the first n queries (the last layer's cls and dist: n = 2)
    if not strided:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return q, k, v


def _gemm_form(monkeypatch, q, k, v, scale):
    """The GEMM attention: two bmm and cpu_kernels' softmax."""
    with monkeypatch.context() as m:
        m.setattr(amx, 'USE_AMX_ATTENTION', False)
        return ga._gemm_attention(q, k, v, scale)


# (B, h, n, N): the queries' tail block of 16 full, partial, padded (n < 16), one key, odd N,
# DeiT's 198 and 197 tokens, 384 px's 578
SHAPES = [
    (2, 3, 198, 198),
    (1, 6, 197, 197),
    (3, 2, 2, 198),
    (2, 2, 17, 17),
    (1, 2, 16, 16),
    (2, 3, 15, 40),
    (1, 2, 1, 1),
    (1, 1, 578, 578),
]


@needs_amx
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
@pytest.mark.parametrize('strided, scale', [(True, 1.0), (True, 0.125), (False, 0.125)])
def test_attention_is_the_gemm_attentions_bits(amx_on, monkeypatch, shape, strided, scale):
    torch.manual_seed(sum(shape))
    q, k, v = qkv_views(*shape, strided)
    with torch.no_grad():
        assert amx.attention_applies(q, k, v, scale)
        got = amx.attention(q, k, v, scale)
        want = _gemm_form(monkeypatch, q, k, v, scale)
    B, h, n, _ = shape
    assert got.shape == want.shape == (B, n, h * 64) and got.dtype == torch.bfloat16
    assert torch.equal(got, want)


@needs_amx
def test_a_constant_row_and_large_scores(amx_on, monkeypatch):
    """Equal scores (a uniform softmax) and scores of a few hundred (exp of -hundreds: 0)."""
    q, k, v = qkv_views(2, 2, 33, 33, strided=True)
    q, k = q.clone(), k.clone()
    q[0, 0] = 0.0
    k[1] *= 40
    with torch.no_grad():
        got = amx.attention(q, k, v, 1.0)
        want = _gemm_form(monkeypatch, q, k, v, 1.0)
    assert torch.equal(got, want) and torch.isfinite(got.float()).all()


@needs_amx
def test_where_it_applies(amx_on):
    q, k, v = qkv_views(2, 2, 20, 20, strided=True)
    with torch.no_grad():
        assert amx.attention_applies(q, k, v, 0.125)
        assert amx.takes_views(64)
        # not: another dtype, head size, scale, key count or a last dim with strides
        assert not amx.attention_applies(q.float(), k.float(), v.float(), 0.125)
        assert not amx.attention_applies(q[..., :32], k[..., :32], v[..., :32], 0.125)
        assert not amx.takes_views(32)
        assert not amx.attention_applies(q, k, v, 0.1)  # not a power of two
        assert not amx.attention_applies(q, k, v, 0.0)
        assert not amx.attention_applies(q, k[:, :, :5], v, 0.125)
        assert not amx.attention_applies(q.transpose(-1, -2), k, v, 0.125)
        big = torch.zeros(1, 1, cpu_kernels.MAX_ROW + 1, 64, dtype=torch.bfloat16)
        assert not amx.attention_applies(big[:, :, :2], big, big, 0.125)
    assert amx.attention_applies(q, k, v, 0.125)  # with autograd too (TileAttention)
    with torch.no_grad():
        amx.USE_AMX_ATTENTION = False
        assert not amx.attention_applies(q, k, v, 0.125) and not amx.takes_views(64)
        amx.USE_AMX_ATTENTION = True
        cpu_kernels.USE_CPU_KERNELS = False  # both switches (restored by the fixture)
        assert not amx.attention_applies(q, k, v, 0.125) and not amx.takes_views(64)


def test_nothing_applies_without_the_tile_unit(monkeypatch):
    """On a CPU without AMX (or with the switch off) the GEMM attention runs."""
    monkeypatch.setattr(amx, 'AMX_SUPPORTED', False)
    q, k, v = qkv_views(1, 2, 8, 8, strided=True)
    with torch.no_grad():
        assert not amx.attention_applies(q, k, v, 0.125)
    assert not amx.takes_views(64)


def test_the_kernel_refuses_what_it_cannot_take():
    """The C++ checks name what is wrong (where the kernels build)."""
    built = cpu_kernels.kernels() if cpu_kernels.SUPPORTED else None
    if built is None or not built.amx_attention_ready():
        pytest.skip('no AMX tile unit')
    q, k, v = qkv_views(1, 2, 8, 8, strided=True)
    with pytest.raises(RuntimeError, match='heads of 64'):
        built.attention_bf16(q[..., :32], k[..., :32], v[..., :32], 1.0)
    with pytest.raises(RuntimeError, match='bf16 q, k and v'):
        built.attention_bf16(q.float(), k, v, 1.0)
    spaced = torch.randn(1, 2, 8, 128).bfloat16()[..., ::2]  # (1, 2, 8, 64), last stride 2
    with pytest.raises(RuntimeError, match='the last dim contiguous'):
        built.attention_bf16(spaced, k, v, 1.0)


def _backbone(out_type: str = 'cls_token', **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=ARCH64, img_size=32, patch_size=8, out_type=out_type, **kwargs
    )
    model.init_weights()
    return model.eval()


def training_grads(x: torch.Tensor, out_type: str, drop_path_rate: float) -> dict:
    """The parameters' gradients of one bf16 autocast training step of :func:`_backbone`
    (an MSE loss on its last output), the same drop-path draws at every call."""
    torch.manual_seed(1)
    model = _backbone(out_type, drop_path_rate=drop_path_rate).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)[-1]  # (cls, dist) or the feature map
        outs = out if isinstance(out, tuple) else (out,)
        loss = sum(F.mse_loss(o.float(), torch.ones_like(o, dtype=torch.float)) for o in outs)
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def assert_grads_close(got: dict, want: dict) -> None:
    """Every parameter has a finite gradient within 5 % (norm) of the other step's."""
    assert got.keys() == want.keys()
    for name, g in got.items():
        assert g is not None and torch.isfinite(g).all(), name
        w = want[name]
        assert (g - w).norm() <= 0.05 * w.norm() + 1e-6, name


@needs_amx
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('batch', [1, 3])
def test_model_with_it_is_the_model_without_bit_for_bit(amx_on, monkeypatch, out_type, batch):
    """bf16 autocast inference of the fast path with the tile-unit attention and with the GEMM
    attention: the same bits; with it the heads are not copied (no split) and it ran once a
    layer."""
    model = _backbone(out_type)
    x = torch.randn(batch, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = model(x)[-1]
        with_amx = list(ran)
        ran.clear()
        amx.USE_AMX_ATTENTION = False
        want = model(x)[-1]
    assert with_amx.count('attention_bf16') == ARCH64['num_layers']
    assert 'split_heads_bf16' not in with_amx and 'softmax_bf16_' not in with_amx
    assert 'attention_bf16' not in ran and 'split_heads_bf16' in ran
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


@needs_amx
def test_compiled_model_takes_the_views_and_gives_eagers_bits(amx_on):
    """Compiled bf16 inference (default mode): no split op in the graph, the attention op runs
    the kernel at run time, the numbers are eager's."""
    from .test_cpu_kernels import _graph_ops, compiled_and_eager

    model, x = _backbone(), torch.randn(2, 3, 32, 32)
    ops = _graph_ops(model, x)
    assert 'mmdeit.gemm_attention' in ops and 'mmdeit.split_heads_bf16' not in ops
    got, want = compiled_and_eager(model, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)


def test_user_bf16_inference_of_a_shipped_deit_config(tmp_path):
    """As a user runs it: DeiT-Ti distilled (heads of 64) through ``init_model``/
    ``inference_model`` under bf16 autocast, in a subprocess from a temp folder; on an AMX CPU
    the tile unit runs the attention and the linears (``amx_linear.py``); with
    ``MMDEIT_CPU_KERNELS=0`` none of the kernels run and the scores stay within bf16's rounding."""
    base = 'mmdeit::deit/deit-tiny-distilled_8xb128_in1k.py'
    on, off = (user_run(tmp_path, setting, base, image_side=240) for setting in ('1', '0'))
    assert on['built'] == cpu_kernels.SUPPORTED
    assert on['tile_unit'] == on['amx_linear'] == amx.AMX_SUPPORTED  # attention and linears
    assert off['built'] is False and off['tile_unit'] is False and off['amx_linear'] is False
    got, want = torch.tensor(on['scores']), torch.tensor(off['scores'])
    assert got.shape == want.shape == (2, 1000)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    assert (got.argmax(-1) == want.argmax(-1)).all()
