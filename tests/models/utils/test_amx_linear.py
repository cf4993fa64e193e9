"""The linear layers on the AMX tile unit (``mmdeit/models/utils/amx_linear.py``): the numbers
against oneDNN's linear and the exact products over row counts (fewer than a block of 32, tails)
and channel counts, the fused GELU against the exact GELU, the shortcut in fp32 and bf16 and in
place, the scaled rows; where it applies and where not; the kept packed weights; the model with
it against the model without (bf16 autocast and a bf16 model), compiled and eager.

On CPUs without AMX it is never built or run: the tests that need it skip there; the ones about
where it applies run everywhere. The user's run of a shipped config is in
``test_amx_attention.py`` (it reports that the linears ran).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.models.utils import amx_linear, cpu_kernels, onednn_linear

from .test_amx_attention import ARCH64 as ARCH
from .test_amx_attention import _backbone
from .test_cpu_kernels import compiled_and_eager, spy_kernels

needs_amx = pytest.mark.skipif(not amx_linear.AMX_SUPPORTED, reason='no AMX tile unit')


def _problem(M: int, K: int, N: int):
    torch.manual_seed(M + K + N)
    x = (torch.randn(M, K) * 2).bfloat16()
    linear = nn.Linear(K, N)
    with torch.no_grad():
        linear.weight.mul_(4)  # products of a few units: roundings to see
    return x, linear


def _onednn(x, linear, gelu=None):
    """oneDNN's bf16 linear on the layer's bf16 weight and bias (what ran before)."""
    w, b = linear.weight.bfloat16(), linear.bias.bfloat16()
    attr, algorithm = ('none', '') if gelu is None else ('gelu', gelu)
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], algorithm)


def _exact(x, linear):
    """The products of the bf16 operands in fp64, plus the bf16 bias."""
    w, b = linear.weight.bfloat16().double(), linear.bias.bfloat16().double()
    return x.double() @ w.t() + b


# (M rows, K in, N out): fewer rows than a block (1, 5, 31), one block, a tail (33, 198: the
# last block overlaps the one before), DeiT-S's shapes at batch 1 (198 tokens)
SHAPES = [(1, 64, 96), (5, 384, 1152), (31, 64, 32), (32, 128, 64), (33, 96, 160)]
SHAPES += [(198, 384, 1152), (198, 1536, 384), (70, 384, 1536)]
SHAPES += [(198, 3072, 128)]  # x and W in chunks and panels (csrc: kChunkBytes, kPanelBytes)


@needs_amx
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_linear_is_onednns(amx_on, shape):
    """The bf16 output of oneDNN's linear: the same products and order of the sums (all bits
    equal up to 384 input channels; 1536 sum in another order in a few outputs: 1 bf16 unit)."""
    x, linear = _problem(*shape)
    with torch.no_grad():
        assert amx_linear.applies(x, linear.weight)
        got = amx_linear.linear(x, linear.weight, linear.bias)
        want = _onednn(x, linear)
    assert got.shape == want.shape == (shape[0], shape[2]) and got.dtype == torch.bfloat16
    if shape[1] <= 384:
        assert torch.equal(got, want)
    else:
        assert (got != want).float().mean() < 1e-3
    torch.testing.assert_close(got.double(), _exact(x, linear), rtol=2**-8, atol=1e-6)


@needs_amx
@pytest.mark.parametrize('shape', SHAPES[:6], ids=lambda s: 'x'.join(map(str, s)))
def test_gelu_is_the_exact_gelu_rounded(amx_on, shape):
    """The fused erf GELU: within a bf16 unit of the exact GELU of the exact products, and
    (outside the tail of tiny negative values, where ``1 + erf`` cancels here as in oneDNN's and
    ATen's GELU: absolute errors below 1e-6) the exact value rounded and oneDNN's fused GELU but
    in a few of 10^4."""
    x, linear = _problem(*shape)
    with torch.no_grad():
        got = amx_linear.linear(x, linear.weight, linear.bias, gelu='none')
        onednn = _onednn(x, linear, gelu='none')
    exact = F.gelu(_exact(x, linear))
    torch.testing.assert_close(got.double(), exact, rtol=2**-8, atol=1e-6)
    big = exact.abs() >= 1e-2
    assert (got != exact.bfloat16())[big].float().mean() < 1e-3
    assert (got != onednn)[big].float().mean() < 1e-3


@needs_amx
@pytest.mark.parametrize('shape', [(5, 64, 96), (33, 384, 384), (198, 128, 64)])
def test_shortcut_is_autocasts_add(amx_on, shape):
    """``shortcut + linear(x)``: the bf16 branch added into the fp32 shortcut (autocast's
    ``x + branch``), into its memory if asked; a bf16 shortcut: bf16's add."""
    x, linear = _problem(*shape)
    shortcut = torch.randn(shape[0], shape[2])
    with torch.no_grad():
        branch = _onednn(x, linear)
        got = amx_linear.linear(x, linear.weight, linear.bias, shortcut=shortcut)
        assert got.dtype == torch.float32 and got.data_ptr() != shortcut.data_ptr()
        assert torch.equal(got, shortcut + branch)
        into = shortcut.clone()
        out = amx_linear.linear(x, linear.weight, linear.bias, shortcut=into, inplace=True)
        assert out.data_ptr() == into.data_ptr() and torch.equal(out, got)
        low = shortcut.bfloat16()
        got = amx_linear.linear(x, linear.weight, linear.bias, shortcut=low)
        assert got.dtype == torch.bfloat16 and torch.equal(got, low + branch)


@needs_amx
def test_scaled_rows_and_no_bias(amx_on):
    """``scale_rows=(n, s)`` (q's 1/sqrt(d), a power of two): the first n outputs exactly
    ``s`` times the unscaled ones; a layer without bias."""
    x, linear = _problem(40, 64, 192)
    with torch.no_grad():
        plain = amx_linear.linear(x, linear.weight, linear.bias)
        scaled = amx_linear.linear(x, linear.weight, linear.bias, scale_rows=(64, 0.125))
        assert torch.equal(scaled[:, :64], plain[:, :64] * 0.125)
        assert torch.equal(scaled[:, 64:], plain[:, 64:])
        linear.bias = None
        no_bias = amx_linear.linear(x, linear.weight, None)
        want = torch.ops.mkldnn._linear_pointwise(x, linear.weight.bfloat16(), None, 'none', [], '')
    assert torch.equal(no_bias, want)


@needs_amx
def test_where_it_applies(amx_on, monkeypatch):
    x, linear = _problem(8, 64, 96)
    w = linear.weight
    with torch.no_grad():
        assert amx_linear.applies(x, w) and amx_linear.applies(x, w, 'none')
        assert amx_linear.applies(x.reshape(2, 4, 64), w)
        # not: fp32 input, tanh GELU, channels not multiples of 32, strides, empty input
        assert not amx_linear.applies(x.float(), w)
        assert not amx_linear.applies(x, w, 'tanh')
        assert not amx_linear.applies(x[:, :48], w[:, :48])
        assert not amx_linear.applies(x, w[:40])
        assert not amx_linear.applies(torch.randn(64, 8).bfloat16().t(), w)
        big = torch.empty(768 * 4, 768)  # DeiT-B's fc1 (4.7 MB in bf16: taken in panels)
        assert amx_linear.applies(torch.randn(2, 768).bfloat16(), big)
        shortcut = torch.randn(8, 96)
        assert amx_linear.shortcut_applies(shortcut, x, w)
        assert not amx_linear.shortcut_applies(shortcut[:, :64], x, w)
        assert not amx_linear.shortcut_applies(shortcut.t().contiguous().t(), x, w)
        assert not amx_linear.shortcut_applies(shortcut.double(), x, w)
    assert not amx_linear.applies(x, w)  # autograd on
    with torch.no_grad():
        monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)
        assert not amx_linear.applies(x, w)
        monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', True)
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
        assert not amx_linear.applies(x, w)


def test_nothing_applies_without_the_tile_unit(monkeypatch):
    """On a CPU without AMX oneDNN's linear runs."""
    monkeypatch.setattr(amx_linear, 'AMX_SUPPORTED', False)
    x, linear = _problem(8, 64, 96)
    with torch.no_grad():
        assert not amx_linear.applies(x, linear.weight)


@needs_amx
def test_the_kernel_refuses_what_it_cannot_take(amx_on):
    """The C++ checks name what is wrong."""
    built = cpu_kernels.kernels()
    with pytest.raises(RuntimeError, match='multiples of 32'):
        built.amx_pack_weight(torch.randn(40, 64).bfloat16())
    with pytest.raises(RuntimeError, match='bf16 weight'):
        built.amx_pack_weight(torch.randn(64, 64))
    packed = built.amx_pack_weight(torch.randn(96, 64).bfloat16())
    x = torch.randn(4, 64).bfloat16()
    with pytest.raises(RuntimeError, match='the input has 32 channels, the weight 64'):
        built.amx_linear_bf16(x[:, :32].contiguous(), packed, None, False, None, False)
    with pytest.raises(RuntimeError, match='a contiguous bf16 input'):
        built.amx_linear_bf16(x.float(), packed, None, False, None, False)
    with pytest.raises(RuntimeError, match='a bias of 96'):
        built.amx_linear_bf16(x, packed, torch.randn(64), False, None, False)
    with pytest.raises(RuntimeError, match='GELU or a shortcut, not both'):
        built.amx_linear_bf16(x, packed, None, True, torch.randn(4, 96), False)
    with pytest.raises(RuntimeError, match="shortcut of the output's shape"):
        built.amx_linear_bf16(x, packed, None, False, torch.randn(4, 64), False)
    square = built.amx_pack_weight(torch.randn(64, 64).bfloat16())
    with pytest.raises(RuntimeError, match='written in place cannot be the input'):
        built.amx_linear_bf16(x, square, None, False, x, True)


@needs_amx
def test_packed_weights_are_kept_and_remade_when_they_change(amx_on):
    """Packed once per parameter; remade after an in-place change (an optimizer step bumps the
    version) and after the layer's ``train()``/``eval()`` (``clear_weight_copies``)."""
    x, linear = _problem(8, 64, 96)
    with torch.no_grad():
        first = amx_linear.packed_weight(linear.weight)
        assert amx_linear.packed_weight(linear.weight) is first
        before = amx_linear.linear(x, linear.weight, linear.bias)
        linear.weight.mul_(-1)
        linear.bias.mul_(-1)
        assert amx_linear.packed_weight(linear.weight) is not first
        assert torch.equal(amx_linear.linear(x, linear.weight, linear.bias), -before)
    onednn_linear.clear_weight_copies(linear)
    assert linear.weight not in amx_linear._PACKED and linear.bias not in amx_linear._BIASES


@needs_amx
@pytest.mark.parametrize('out_type', ['cls_token', 'featmap'])
@pytest.mark.parametrize('precision', ['autocast', 'bf16-model'])
def test_model_with_it_is_the_model_without_within_bf16(amx_on, monkeypatch, out_type, precision):
    """The fast path's bf16 inference with the tile-unit linears and with oneDNN's: within bf16
    rounding; with it the patch embedding's GEMM and each layer's four linears ran on the tile
    unit (the last layer's q, k, v
    of the cls/dist tokens excepted: oneDNN on the weight's rows) and the shortcuts were added
    in them (the cls/dist tokens' shortcut, a strided view: ATen's add)."""
    model = _backbone(out_type)
    x = torch.randn(3, 3, 32, 32)
    if precision == 'bf16-model':
        model, x = model.bfloat16(), x.bfloat16()
    ran = spy_kernels(monkeypatch)
    with torch.no_grad(), torch.autocast('cpu', torch.bfloat16, enabled=precision == 'autocast'):
        got = model(x)[-1]
        with_amx = list(ran)
        monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)
        want = model(x)[-1]
    last_layer = 4 if out_type == 'featmap' else 3  # proj, fc1, fc2 (+ qkv)
    patch_embedding = 1  # patch_gemm.py
    want_calls = patch_embedding + 4 * (ARCH['num_layers'] - 1) + last_layer
    assert with_amx.count('amx_linear_bf16') == want_calls
    assert 'add_bf16_out' not in with_amx
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=0, atol=3e-2)


@needs_amx
def test_compiled_model_runs_it_inside_the_linear_op(amx_on, monkeypatch):
    """Compiled bf16 inference (default mode): the ``mmdeit::onednn_linear`` op runs the tile
    unit's kernel at run time; the numbers are eager's."""
    model, x = _backbone(), torch.randn(2, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    got, want = compiled_and_eager(model, x)
    eager = 1 + 4 * ARCH['num_layers'] - 1  # the patches; the last layer's q, k, v: oneDNN
    assert ran.count('amx_linear_bf16') > eager  # and the graph's
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
