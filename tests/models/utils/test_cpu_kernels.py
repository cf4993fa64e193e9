"""mmdeit's C++ kernels for bf16 autocast inference (``mmdeit/models/utils/cpu_kernels.py``):
each against the ATen ops it replaces, where it applies and where not, the model with the
kernels against the model without, and a user's bf16 inference as a subprocess from a folder
outside the checkout with the switch's environment variable on and off (their build, its folder
and its fallback: ``test_kernel_build.py``).

On CPUs without AVX-512 BF16 the kernels are never built or run: the tests that need them skip
there; the ones about the switch run everywhere.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import amx_linear, cpu_kernels

from ...conftest import TINY_ARCH

needs_kernels = pytest.mark.skipif(not cpu_kernels.SUPPORTED, reason='no AVX-512 BF16')
BF16_UNIT = 2.0**-7  # one bf16 unit in the last place, relative


def _within_one_bf16_unit(got: torch.Tensor, want: torch.Tensor, share: float) -> None:
    """``got`` equals ``want`` (both bf16) but in at most ``share`` of the elements, and there by
    at most one bf16 unit of the value."""
    assert got.dtype == want.dtype == torch.bfloat16 and got.shape == want.shape
    g, w = got.float(), want.float()
    assert torch.all((g - w).abs() <= BF16_UNIT * w.abs() + 1e-30), (g - w).abs().max()
    assert (got != want).float().mean().item() <= share


@pytest.fixture
def kernels_on(monkeypatch):
    """The switch on and the kernels built (a failed build fails the test: on this CPU they
    should build)."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
    assert cpu_kernels.kernels() is not None, 'the CPU kernels did not build'


@needs_kernels
@pytest.mark.parametrize('n', [1, 7, 16, 17, 198, 577, 1024])
def test_softmax_is_atens_within_one_bf16_unit(kernels_on, n):
    torch.manual_seed(n)
    scores = (torch.randn(67, n) * 4).bfloat16()  # 67 rows: uneven over the threads
    scores[0] = 0.0  # a constant row
    want = torch.softmax(scores.float(), dim=-1).bfloat16()  # fp32 inside, one rounding
    got = scores.clone()
    assert cpu_kernels.softmax_(got) is got  # in place
    _within_one_bf16_unit(got, want, share=1e-3)
    assert torch.allclose(got.float().sum(-1), torch.ones(67), atol=n * 2e-3)


@needs_kernels
def test_the_row_limit_is_the_builds(kernels_on):
    """``MAX_ROW`` (the checks' limit) is the compiled kernels' own; a longer row is refused."""
    assert cpu_kernels.kernels().MAX_ROW == cpu_kernels.MAX_ROW
    with pytest.raises(RuntimeError, match='rows of 1 to'):
        cpu_kernels.kernels().softmax_bf16_(torch.zeros(2, cpu_kernels.MAX_ROW + 1).bfloat16())


@needs_kernels
@pytest.mark.parametrize('c', [1, 24, 384, 1000])
def test_layer_norm_in_bf16_is_atens_rounded(kernels_on, c):
    torch.manual_seed(c)
    x = torch.randn(3, 50, c) * 3 + 1
    norm = nn.LayerNorm(c, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    with torch.no_grad():
        want = F.layer_norm(x, (c,), norm.weight, norm.bias, norm.eps).bfloat16()
        got = cpu_kernels.layer_norm_bf16(x, norm)
    assert got.shape == x.shape
    _within_one_bf16_unit(got, want, share=2e-3)


@needs_kernels
@pytest.mark.parametrize('inplace', [False, True])
@pytest.mark.parametrize('numel', [5, 16, 8 * 198 * 384 + 3])
def test_add_gives_atens_bits(kernels_on, inplace, numel):
    x = torch.randn(numel)
    y = torch.randn(numel).bfloat16()
    want = x + y
    got = cpu_kernels.add_bf16(x, y, inplace=inplace)
    assert torch.equal(got, want)
    assert (got is x) == inplace


@needs_kernels
@pytest.mark.parametrize('parts, heads, d', [(3, 6, 64), (2, 6, 64), (3, 2, 16), (1, 3, 5)])
def test_split_heads_copies_the_heads_views(kernels_on, parts, heads, d):
    torch.manual_seed(parts * heads + d)
    t = torch.randn(3, 37, parts * heads * d).bfloat16()  # (B, N, parts*C)
    views = t.reshape(3, 37, parts, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    got = cpu_kernels.split_heads(t, parts, heads)
    assert len(got) == parts
    for g, w in zip(got, views, strict=True):
        assert g.shape == (3, heads, 37, d) and g.is_contiguous()
        assert torch.equal(g, w)


@needs_kernels
def test_where_the_kernels_apply(kernels_on):
    rows = torch.randn(4, 198).bfloat16()
    x = torch.randn(2, 5, 24)
    norm = nn.LayerNorm(24)
    branch = torch.randn(2, 5, 24).bfloat16()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert cpu_kernels.softmax_applies(rows)
        assert cpu_kernels.layer_norm_applies(x, norm)
        assert cpu_kernels.add_applies(x, branch)
        # not: another dtype, strides, size or module
        assert not cpu_kernels.softmax_applies(rows.float())
        assert not cpu_kernels.softmax_applies(rows.t())
        assert not cpu_kernels.softmax_applies(torch.zeros(2, 1025, dtype=torch.bfloat16))
        assert not cpu_kernels.layer_norm_applies(x.transpose(0, 1), norm)
        assert not cpu_kernels.layer_norm_applies(x, nn.LayerNorm(24, elementwise_affine=False))
        assert not cpu_kernels.layer_norm_applies(x, nn.GroupNorm(1, 24))
        assert not cpu_kernels.add_applies(x, branch.float())
        assert not cpu_kernels.add_applies(x[:, :3], branch[:, :3])
        assert cpu_kernels.split_applies(branch)
        assert not cpu_kernels.split_applies(branch.float())
        assert not cpu_kernels.split_applies(branch.transpose(0, 1))
    with torch.no_grad():  # the LayerNorm only under bf16 autocast: its output is bf16
        assert not cpu_kernels.layer_norm_applies(x, norm)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autograd on: none
        assert not cpu_kernels.split_applies(branch)
        assert not cpu_kernels.softmax_applies(rows)
        assert not cpu_kernels.layer_norm_applies(x, norm)
        assert not cpu_kernels.add_applies(x, branch)


def test_the_switch_follows_the_cpu_and_the_environment():
    from mmdeit.models.utils import cpu_ops

    assert cpu_kernels.SUPPORTED == bool(torch.cpu._is_avx512_bf16_supported())
    assert cpu_ops.cpu_supports('no_such_feature') is False  # torch cannot tell: no
    if os.environ.get('MMDEIT_CPU_KERNELS', '1') != '0':
        assert cpu_kernels.USE_CPU_KERNELS == cpu_kernels.SUPPORTED


def test_switch_off_means_atens_ops(monkeypatch):
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    assert cpu_kernels.kernels() is None
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert not cpu_kernels.softmax_applies(torch.randn(4, 8).bfloat16())
        x, norm = torch.randn(2, 5, 24), nn.LayerNorm(24)
        assert not cpu_kernels.layer_norm_applies(x, norm)
        assert cpu_kernels.pre_norm(norm, x).dtype == torch.float32  # ATen's LayerNorm
        branch = torch.randn(2, 5, 24).bfloat16()
        assert torch.equal(cpu_kernels.add(x, branch), x + branch)


def _backbone() -> nn.Module:
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=32, patch_size=8, out_type='cls_token'
    )
    model.init_weights()
    return model.eval()


def spy_kernels(monkeypatch) -> list:
    """The names of the built kernels' functions the code looks up from now on, in order."""
    built, ran = cpu_kernels.kernels(), []

    class Spy:
        def __getattr__(self, name):
            ran.append(name)
            return getattr(built, name)

    monkeypatch.setattr(cpu_kernels, 'kernels', lambda: Spy())
    return ran


@needs_kernels
@pytest.mark.parametrize('batch', [1, 3])
def test_model_with_kernels_is_the_model_without_within_bf16(kernels_on, monkeypatch, batch):
    """The fast path's bf16 autocast inference with and without the kernels; all four ran (the
    AMX linear off: it adds the branch in its GEMM, ``test_amx_linear.py``)."""
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)
    model = _backbone()
    x = torch.randn(batch, 3, 32, 32)
    ran = spy_kernels(monkeypatch)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = torch.stack(model(x)[-1])  # (cls, dist) of the last layer
        monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
        want = torch.stack(model(x)[-1])
    assert {'softmax_bf16_', 'layer_norm_bf16', 'add_bf16_out', 'split_heads_bf16'} <= set(ran)
    assert got.shape == want.shape == (2, batch, TINY_ARCH['embed_dims'])
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=3e-2)


USER_SCRIPT = """
import json, sys
import numpy as np, torch
from mmdeit.apis import inference_model, init_model
from mmdeit.models.utils import amx_attention, amx_linear, cpu_kernels

torch.manual_seed(0)
model = init_model('my_config.py')
rng = np.random.default_rng(0)
side = int(sys.argv[1])
images = [rng.integers(0, 256, (side, side + 8, 3), dtype=np.uint8) for _ in range(2)]
with torch.autocast('cpu', dtype=torch.bfloat16):
    out = inference_model(model, images)
print(json.dumps(dict(
    switch=cpu_kernels.USE_CPU_KERNELS,
    built=cpu_kernels._built is not None,
    tile_unit=amx_attention._ready is True,
    amx_linear=len(amx_linear._PACKED) > 0,
    scores=[o['pred_scores'].tolist() for o in out],
)))
"""


def user_run(
    tmp_path,
    setting: str,
    base: str = 'mmdeit::digits/deit-digits-tiny_1xb64_digits.py',
    image_side: int = 8,
    script: str = USER_SCRIPT,
) -> dict:
    """``script`` (default :data:`USER_SCRIPT`) as a user runs it: a subprocess in ``tmp_path``
    with ``MMDEIT_CPU_KERNELS=setting``, next to ``my_config.py`` (``_base_ = base``), given
    ``image_side`` (its images' height; the width 8 more); its last stdout line, JSON."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTEST_CURRENT_TEST')}
    env.update(CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='2', MMDEIT_CPU_KERNELS=setting)
    (tmp_path / 'my_config.py').write_text(f"_base_ = '{base}'\n")
    (tmp_path / 'user_inference.py').write_text(script)
    proc = subprocess.run(
        [sys.executable, 'user_inference.py', str(image_side)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_user_bf16_inference_with_and_without_the_kernels(tmp_path):
    """As a user runs it: a shipped config through ``init_model``/``inference_model`` under
    bf16 autocast, in a subprocess from a temp folder; ``MMDEIT_CPU_KERNELS=0`` turns them off."""
    on, off = user_run(tmp_path, '1'), user_run(tmp_path, '0')
    assert on['switch'] == on['built'] == cpu_kernels.SUPPORTED
    assert off['switch'] is False and off['built'] is False
    torch.testing.assert_close(
        torch.tensor(on['scores']), torch.tensor(off['scores']), rtol=0, atol=2e-2
    )


def _graph_ops(model, x, *, grad: bool = False, freezing: bool = False) -> set:
    """The ``mmdeit::`` ops of the graph dynamo traces for bf16 autocast ``model(x)``."""
    from torch._inductor import config as inductor_config

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.set_grad_enabled(grad), torch.autocast('cpu', dtype=torch.bfloat16):
        with inductor_config.patch(freezing=freezing):
            compiled(x)
    torch._dynamo.reset()
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == 'call_function'}
    return {t for t in targets if t.startswith('mmdeit.')}


@needs_kernels
def test_compiled_inference_calls_the_kernels_as_ops(kernels_on, monkeypatch):
    """Compiled bf16 inference: the pre-norm, the add and the split are ops of the graph (the
    softmax runs inside the attention op); with autograd none; under inductor's freezing where
    the plain ops are traced (AMX, ``cpu_ops.PLAIN_OPS_WHEN_FROZEN``) none."""
    from mmdeit.models.utils import cpu_ops

    model, x = _backbone(), torch.randn(2, 3, 32, 32)
    kernel_ops = {'mmdeit.layer_norm_bf16', 'mmdeit.add_bf16', 'mmdeit.split_heads_bf16'}
    assert kernel_ops | {'mmdeit.gemm_attention'} <= _graph_ops(model, x)
    assert not kernel_ops & _graph_ops(model, x, grad=True)
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', True)
    monkeypatch.setattr(cpu_ops, '_tile_kernels_run', lambda: False)  # else they stay (AMX)
    assert not _graph_ops(model, x, freezing=True)
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    assert not kernel_ops & _graph_ops(model, x)


@needs_kernels
def test_compiled_model_with_the_kernel_ops_is_eager(kernels_on):
    """Inductor's graph with the ops gives eager's numbers (bf16 autocast, no autograd)."""
    got, want = compiled_and_eager(_backbone(), torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(got, want, rtol=0, atol=3e-2)


def compiled_and_eager(model, x):
    """The last layer's (cls, dist) of ``model(x)`` compiled (default mode) and eager, in bf16
    autocast without autograd, as fp32 tensors."""
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        want = torch.stack(model(x)[-1]).float()
        got = torch.stack(compiled(x)[-1]).float()
    torch._dynamo.reset()
    return got, want


def test_the_ops_fall_back_to_aten_without_the_kernels(monkeypatch):
    """A graph run where the kernels are not built (another process, a failed build) computes
    the same with ATen's ops."""
    monkeypatch.setattr(cpu_kernels, 'kernels', lambda: None)
    x, w, b = torch.randn(2, 5, 24), torch.randn(24), torch.randn(24)
    want = F.layer_norm(x, (24,), w, b, 1e-6).bfloat16()
    assert torch.equal(torch.ops.mmdeit.layer_norm_bf16(x, w, b, 1e-6), want)
    y = torch.randn(2, 5, 24).bfloat16()
    assert torch.equal(torch.ops.mmdeit.add_bf16(x, y), x + y)
    t = torch.randn(2, 5, 3 * 24).bfloat16()
    got = torch.ops.mmdeit.split_heads_bf16(t, 3, 4)  # (3, B, h, N, d)
    want = t.reshape(2, 5, 3, 4, 6).permute(2, 0, 3, 1, 4)
    assert got.is_contiguous() and torch.equal(got, want)
