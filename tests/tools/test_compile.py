"""``torch.compile`` of mmdeit's models on the CPU: one graph (no data-dependent shapes, no
host syncs), the same numbers as eager.

Tested in-process on the tiny arch: a ``tools/train.py`` run with the config's
``compile=True`` took ~4 minutes of compilation on the 2-core test machine, and mmengine
0.10.7 compiles its whole ``train_step``, the optimizer step included (see
``docs/design.md``).
"""

import pytest
import torch

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.registry import MODELS

from ..conftest import TINY_ARCH
from ..models.classifiers.test_distilled_image_classifier import (  # noqa: F401
    _batch,
    _model_cfg,
    teacher_ckpt,
)

IMG = 32


def _backbone(fast_path: bool = True, drop_path_rate: float = 0.5):
    torch.manual_seed(0)
    model = DistilledVisionTransformer(
        arch=TINY_ARCH,
        img_size=IMG,
        patch_size=8,
        drop_path_rate=drop_path_rate,
        fast_path=fast_path,
    )
    with torch.no_grad():
        for name in ('pos_embed', *model.extra_tokens):
            getattr(model, name).normal_(std=0.02)
    return model


def _step(model, x, seed: int):
    torch.manual_seed(seed)
    cls_token, dist_token = model(x)[-1]
    loss = cls_token.square().mean() + dist_token.square().mean()
    loss.backward()
    module = getattr(model, '_orig_mod', model)  # a compiled model's parameters are its own
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    model.zero_grad(set_to_none=True)
    return (cls_token, dist_token), grads


@pytest.mark.parametrize('fast_path', [True, False])
def test_training_compiles_to_one_graph_with_stochastic_depth(fast_path):
    """fullgraph: the fast path's stochastic depth takes its mask form while compiling (no
    ``nonzero``), with the eager (skipping) form's random draw and numbers."""
    model = _backbone(fast_path).train()
    x = torch.randn(8, 3, IMG, IMG)
    want, want_grads = _step(model, x, seed=1)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    got, got_grads = _step(compiled, x, seed=1)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, msg=name)


def _spy(monkeypatch, module, name: str) -> list:
    """Record the dtype of the first argument of each call of ``module.name`` (still called)."""
    calls, real = [], getattr(module, name)

    def spy(first, *args):
        calls.append(first.dtype)
        return real(first, *args)

    monkeypatch.setattr(module, name, spy)
    return calls


@pytest.mark.parametrize('dtype', ['bf16', 'fp32'])
def test_inference_compiles_with_inductor_calling_our_onednn_op(monkeypatch, dtype):
    """Inductor's code (tens of seconds to compile here): where oneDNN applies, each linear of
    the compiled graph is the op ``mmdeit::onednn_linear`` (its body runs at every call, with
    the kept bf16 weight copies), and in bf16 each attention the op ``mmdeit::gemm_attention``
    (not SDPA, into which inductor would turn its ops); the rest is inductor's; the numbers are
    eager's, also after the weights change in place."""
    from mmdeit.models.utils import amx_linear, gemm_attention, onednn_linear

    if dtype == 'bf16' and not onednn_linear.BF16_SUPPORTED:
        pytest.skip('no native bf16 GEMMs in oneDNN on this CPU')
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', False)  # oneDNN's path (test_amx_linear.py)
    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', onednn_linear._HAS_OP)  # AVX-512's choice
    calls = _spy(monkeypatch, onednn_linear, '_linear_pointwise')  # the linear op's body
    attention_calls = _spy(monkeypatch, gemm_attention, '_gemm_attention')  # the attention op's
    model = _backbone().eval()
    x = torch.randn(4, 3, IMG, IMG)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    autocast = torch.autocast('cpu', torch.bfloat16, enabled=dtype == 'bf16')
    tol = dict(rtol=0.05, atol=0.05) if dtype == 'bf16' else dict(rtol=1e-5, atol=1e-5)
    for _ in range(2):  # the second time with weights changed in place
        with torch.inference_mode(), autocast:
            want = model(x)[-1]
            calls.clear()
            attention_calls.clear()
            got = compiled(x)[-1]
        assert len(calls) == 4 * TINY_ARCH['num_layers'] + 1  # the last qkv: q, then k and v
        assert len(attention_calls) == (TINY_ARCH['num_layers'] if dtype == 'bf16' else 0)
        assert set(calls) == {torch.bfloat16 if dtype == 'bf16' else torch.float32}
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g.float(), w.float(), **tol)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.25)


def test_compiled_bf16_inference_folds_the_scale_into_q_with_the_same_bits(monkeypatch):
    """The compiled graph folds the attention's ``1/sqrt(d)`` into q's projection (the op's
    scale rows) as eager does: each attention op is called with scale 1, and the outputs are
    the bits of the graph compiled with the fold off (q scaled by the attention op)."""
    from mmdeit.models.utils import gemm_attention, onednn_linear

    if not onednn_linear.BF16_SUPPORTED:
        pytest.skip('no native bf16 GEMMs in oneDNN on this CPU')
    scales, real = [], gemm_attention._gemm_attention
    monkeypatch.setattr(
        gemm_attention, '_gemm_attention', lambda *a: scales.append(a[3]) or real(*a)
    )
    model, x = _backbone().eval(), torch.randn(4, 3, IMG, IMG)
    outs = {}
    for fold in (True, False):
        monkeypatch.setattr(gemm_attention, 'FOLD_Q_SCALE', fold)
        torch._dynamo.reset()
        scales.clear()
        with torch.inference_mode(), torch.autocast('cpu', torch.bfloat16):
            outs[fold] = torch.compile(model, fullgraph=True)(x)[-1]
        head_dims = TINY_ARCH['embed_dims'] // TINY_ARCH['num_heads']  # 16: 1/4 folds
        assert scales == [1.0 if fold else head_dims**-0.5] * TINY_ARCH['num_layers']
    for folded, unfolded in zip(outs[True], outs[False], strict=True):
        assert torch.equal(folded, unfolded)


def test_bf16_training_compiles_without_the_inference_ops():
    """With autograd the compiled graph keeps differentiable ops: the attention is not the
    ``mmdeit::gemm_attention`` op (it has no backward), the gradients are eager's."""
    model = _backbone(drop_path_rate=0.0).train()
    x = torch.randn(4, 3, IMG, IMG)
    with torch.autocast('cpu', torch.bfloat16):
        want, want_grads = _step(model, x, seed=1)
        torch._dynamo.reset()
        got, got_grads = _step(torch.compile(model, backend='aot_eager', fullgraph=True), x, seed=1)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=0.05, atol=0.05)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=0.05, atol=0.05, msg=name)


def test_distillation_loss_compiles(teacher_ckpt):  # noqa: F811
    """The classifier's loss with the teacher (run under inference mode) compiles and
    trains the same as eager."""
    model = MODELS.build(_model_cfg(teacher_ckpt, mode='soft')).train()
    data = model.data_preprocessor(_batch(4), training=True)
    want = model.loss(data['inputs'], data['data_samples'])
    torch._dynamo.reset()
    loss_fn = torch.compile(model.loss, backend='aot_eager')
    got = loss_fn(data['inputs'], data['data_samples'])
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=key)
    sum(got.values()).backward()
    assert model.backbone.cls_token.grad is not None


@pytest.mark.parametrize('fp32_onednn', [False, True])  # AVX2-only / AVX-512 CPUs' choice
@pytest.mark.parametrize('plain_when_frozen', [False, True])  # without / with AMX
def test_output_rows_are_right_under_max_autotune_with_freezing(
    monkeypatch, fp32_onednn, plain_when_frozen
):
    """``linear_rows`` of the last layer's k and v (``weight[C:]``): inductor's CPU GEMM template
    (max-autotune with freezing) read such a weight view at the wrong place (errors of ~3 on
    this test, torch 2.13); the traced form slices the whole layer's output instead (inductor's
    GEMM without oneDNN, our oneDNN op with it)."""
    from torch._inductor import config as inductor_config

    from mmdeit.models.utils import cpu_ops, onednn_linear
    from mmdeit.models.utils.onednn_linear import linear_rows

    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', fp32_onednn and onednn_linear._HAS_OP)
    monkeypatch.setattr(cpu_ops, 'PLAIN_OPS_WHEN_FROZEN', plain_when_frozen)

    torch.manual_seed(0)
    qkv = torch.nn.Linear(32, 96).eval()
    x = torch.randn(34, 32)

    def kv(t: torch.Tensor) -> torch.Tensor:
        return linear_rows(t, qkv, slice(32, 96))

    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(freezing=True):
        got = torch.compile(kv, mode='max-autotune')(x)
        want = torch.nn.functional.linear(x, qkv.weight[32:], qkv.bias[32:])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_gpu_autocast_routes_compile_to_one_graph(monkeypatch, mode):
    """The layers' routes of bf16 autocast on a GPU (forced here on the CPU: no oneDNN, no
    GEMM attention, no skipped samples) compile with ``fullgraph=True``: no check of the
    autocast state breaks the graph (torch 2.11's dynamo could not trace
    ``torch.amp.is_autocast_available``, and each layer's graph broke under CUDA graphs)."""
    from mmdeit.models.backbones import fast_transformer_layer as ftl

    monkeypatch.setattr(ftl, '_measures_apply', lambda x: not ftl._autocast_on(x))
    monkeypatch.setattr(ftl.onednn, 'onednn_applies', lambda *a: False)
    monkeypatch.setattr(ftl, 'gemm_attention_applies', lambda *a: False)
    monkeypatch.setattr(ftl, 'skips_dropped_samples', lambda x: False)
    model = getattr(_backbone(drop_path_rate=0.0), mode)()
    x = torch.randn(4, 3, IMG, IMG)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.autocast('cpu', torch.bfloat16), torch.set_grad_enabled(mode == 'train'):
        want, got = model(x)[-1], compiled(x)[-1]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.float(), w.float(), rtol=0.05, atol=0.05)
