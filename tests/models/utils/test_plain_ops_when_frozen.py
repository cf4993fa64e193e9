"""The fast path's own ops give way to the plain ones where inductor freezes the weights on an
AMX CPU (``cpu_ops.plain_ops_traced``): which graph ``torch.compile`` traces with and without
``freezing``, with the switch on and off, in each precision the ops apply to; the frozen
compiled model's numbers against eager's; the switch's default."""

import pytest
import torch
from torch._inductor import config as inductor_config

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.utils import amx_linear, cpu_kernels, cpu_ops, onednn_linear

from ...conftest import TINY_ARCH

PRECISIONS = [
    pytest.param(
        'bf16 autocast',
        marks=pytest.mark.skipif(not onednn_linear.BF16_SUPPORTED, reason='no bf16 oneDNN'),
    ),
    pytest.param(
        'fp32',
        marks=pytest.mark.skipif(not onednn_linear.FP32_ONEDNN, reason='fp32 takes ATen here'),
    ),
]


def _backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=32, patch_size=8, out_type='cls_token'
    )
    model.init_weights()
    return model.eval()


def _autocast(precision: str):
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16 autocast')


def _capturing(model, fullgraph: bool = False):
    """``model`` compiled with a backend that runs each graph dynamo traces as it is and
    records it; returns the compiled model and the list of graphs (dynamo's caches reset)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    return torch.compile(model, backend=backend, fullgraph=fullgraph), graphs


def _traced_ops(model, x, precision: str, freezing: bool) -> set:
    """The call targets of the graph dynamo traces for ``model(x)`` without autograd."""
    compiled, graphs = _capturing(model, fullgraph=True)
    with torch.no_grad(), _autocast(precision), inductor_config.patch(freezing=freezing):
        compiled(x)
    torch._dynamo.reset()
    return {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == 'call_function'}


@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('switch', [True, False])
@pytest.mark.parametrize('freezing', [True, False])
def test_ops_step_aside_only_under_freezing_with_the_switch(
    monkeypatch, precision, switch, freezing
):
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', switch)
    monkeypatch.setattr(cpu_ops, '_tile_kernels_run', lambda: False)  # see the test below
    targets = _traced_ops(_backbone(), torch.randn(2, 3, 32, 32), precision, freezing)
    own = {t for t in targets if 'mmdeit.' in t}
    if switch and freezing:  # the reference's formula: linears and SDPA for inductor
        assert not own, own
        assert any('linear' in t for t in targets)
    else:
        assert 'mmdeit.onednn_linear' in own, targets
        if precision == 'bf16 autocast':
            assert 'mmdeit.gemm_attention' in own


@pytest.mark.skipif(not amx_linear.AMX_SUPPORTED, reason='no AMX tile unit')
@pytest.mark.parametrize('precision', PRECISIONS)
def test_ops_stay_under_freezing_in_bf16_where_the_tile_kernels_run(monkeypatch, precision):
    """On AMX with mmdeit's tile-unit kernels the bf16 graph keeps the fast path's ops under
    freezing (as fast as eager there; the plain graph 1.25x its time); fp32 traces the plain
    ops."""
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', True)
    assert cpu_kernels.kernels() is not None and cpu_ops._tile_kernels_run()
    targets = _traced_ops(_backbone(), torch.randn(2, 3, 32, 32), precision, freezing=True)
    own = {t for t in targets if 'mmdeit.' in t}
    if precision == 'bf16 autocast':
        assert {'mmdeit.onednn_linear', 'mmdeit.gemm_attention'} <= own, targets
    else:
        assert not own, own


def test_not_outside_tracing_nor_with_autograd_nor_off_the_cpu(monkeypatch):
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', True)
    x, meta = torch.zeros(1), torch.zeros(1, device='meta')
    with inductor_config.patch(freezing=True):
        assert not cpu_ops.plain_ops_traced(x)  # eager: the fast path's own ops
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
        assert not cpu_ops.plain_ops_traced(x)  # autograd on (a training graph)
        with torch.no_grad():
            assert cpu_ops.plain_ops_traced(x)
            assert not cpu_ops.plain_ops_traced(meta)  # another device: measured on CPUs only
    with torch.no_grad():
        assert not cpu_ops.plain_ops_traced(x)  # no freezing


def test_switch_is_on_where_the_cpu_has_amx():
    assert cpu_ops.PLAIN_OPS_WHEN_FROZEN == bool(torch.cpu._is_amx_tile_supported())


@pytest.mark.parametrize('precision, tol', [('bf16 autocast', 3e-2), ('fp32', 1e-5)])
def test_frozen_compiled_model_predicts_as_eager(monkeypatch, precision, tol):
    if precision == 'bf16 autocast' and not onednn_linear.BF16_SUPPORTED:
        pytest.skip('no bf16 oneDNN')
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', True)
    model, x = _backbone(), torch.randn(3, 3, 32, 32)
    with torch.no_grad(), _autocast(precision):
        expected = torch.cat(model(x)[-1], dim=1).float()  # cls, dist
    torch._dynamo.reset()
    compiled = torch.compile(model)
    with torch.no_grad(), _autocast(precision), inductor_config.patch(freezing=True):
        got = torch.cat(compiled(x)[-1], dim=1).float()
    torch._dynamo.reset()
    assert got.shape == expected.shape == (3, 64)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_graph_traced_under_freezing_is_kept_after_the_setting(monkeypatch):
    """The setting is read once, at tracing: a graph traced inside
    ``inductor_config.patch(freezing=True)`` (as ``benchmark.py --compile max-autotune``
    compiles) is called after the block without being traced again (no guard on it)."""
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', True)
    compiled, graphs = _capturing(_backbone())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with inductor_config.patch(freezing=True):
            compiled(x)
        compiled(x)
    torch._dynamo.reset()
    assert len(graphs) == 1
