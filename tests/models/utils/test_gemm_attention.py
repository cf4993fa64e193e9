"""Attention as two batched GEMMs (bf16 on the CPU): the formula SDPA computes, its gradients,
where it applies, and that the fast layer takes it exactly there."""

import pytest
import torch
import torch.nn.functional as F

from mmdeit.models.backbones.fast_transformer_layer import FastMultiheadAttention
from mmdeit.models.utils import cpu_kernels
from mmdeit.models.utils import gemm_attention as ga

B, H, N, D = 3, 4, 11, 16


def _qkv(dtype=torch.float32, requires_grad=False):
    """q, k, v as the attention module has them: strided views of one (B, N, 3C) tensor."""
    torch.manual_seed(0)
    qkv = torch.randn(B, N, 3 * H * D, dtype=dtype, requires_grad=requires_grad)
    q, k, v = qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
    return qkv, q, k, v


def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q, k, v)  # (B, h, n, d)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)  # (B, n, C)


@pytest.mark.parametrize('queries', [N, 2], ids=['all tokens', 'first 2 queries'])
def test_fp32_is_sdpa(queries):
    _, q, k, v = _qkv()
    got = ga.gemm_attention(q[:, :, :queries], k, v, D**-0.5)
    assert got.shape == (B, queries, H * D)
    torch.testing.assert_close(got, _sdpa(q[:, :, :queries], k, v), rtol=1e-5, atol=1e-5)


def test_bf16_is_fp32_within_bf16_and_matches_sdpa_in_bf16():
    qkv, q, k, v = _qkv()
    exact = _sdpa(q, k, v)
    _, qb, kb, vb = (t.bfloat16() for t in (qkv, q, k, v))
    got = ga.gemm_attention(qb, kb, vb, D**-0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), exact, rtol=0.02, atol=0.02)
    torch.testing.assert_close(got, _sdpa(qb, kb, vb), rtol=0.02, atol=0.02)


def test_gradients_are_sdpa_gradients():
    qkv, q, k, v = _qkv(requires_grad=True)
    weights = torch.randn(B, N, H * D)
    (ga.gemm_attention(q, k, v, D**-0.5) * weights).sum().backward()
    got, qkv.grad = qkv.grad, None
    (_sdpa(q, k, v) * weights).sum().backward()
    torch.testing.assert_close(got, qkv.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('tokens, queries', [(N, N), (N, 2), (198, 198), (198, 2)])
@pytest.mark.parametrize('grad_mode', [torch.no_grad, torch.inference_mode])
def test_softmax_in_the_scores_memory_is_bit_for_bit_the_new_tensors(
    monkeypatch, dtype, tokens, queries, grad_mode
):
    """Without autograd ATen's softmax writes into the scores (``IN_PLACE_SOFTMAX``): the same
    bits as into a new tensor, rows of any length (198: DeiT's tokens, not a multiple of the
    vector width). mmdeit's C++ softmax, in place too, is off here (``test_cpu_kernels.py``)."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', False)
    torch.manual_seed(1)
    qkv = 3 * torch.randn(B, tokens, 3 * H * D, dtype=dtype)  # wide scores: a peaked softmax
    q, k, v = qkv.reshape(B, tokens, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
    q = q[:, :, :queries]
    with grad_mode():
        got = ga.gemm_attention(q, k, v, D**-0.5)
        monkeypatch.setattr(ga, 'IN_PLACE_SOFTMAX', False)
        want = ga.gemm_attention(q, k, v, D**-0.5)
    assert torch.equal(got, want)
    if dtype == torch.float32:  # bf16 against SDPA: the tests above, at unit-scale scores
        torch.testing.assert_close(got, _sdpa(q, k, v), rtol=1e-5, atol=1e-5)


def test_applies_to_bf16_on_the_cpu_without_attention_dropout():
    _, q, _, _ = _qkv()
    assert ga.gemm_attention_applies(q.bfloat16())
    assert not ga.gemm_attention_applies(q)  # fp32: the flash kernel is faster
    assert not ga.gemm_attention_applies(q.bfloat16(), dropout_p=0.1)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('precision', ['fp32', 'bf16 autocast', 'bf16 model'])
def test_the_fast_attention_takes_it_in_bf16_only(monkeypatch, precision, training):
    calls = []
    real = ga.gemm_attention

    def spy(*args):
        calls.append(args[0].dtype)
        return real(*args)

    monkeypatch.setattr(
        'mmdeit.models.backbones.fast_transformer_layer.gemm_attention', spy, raising=True
    )
    torch.manual_seed(0)
    attn = FastMultiheadAttention(H * D, H).train(training)
    x = torch.randn(B, N, H * D)
    if precision == 'bf16 model':
        attn, x = attn.bfloat16(), x.bfloat16()
    enabled = precision == 'bf16 autocast'
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=enabled):
        out = attn(x)
        want = torch.nn.functional.linear(
            _sdpa(*attn._split_heads(attn.qkv(x), 3)), attn.proj.weight, attn.proj.bias
        )
    assert calls == ([] if precision == 'fp32' else [torch.bfloat16])
    torch.testing.assert_close(out.float(), want.float(), rtol=0.02, atol=0.02)
    if training:
        out.float().sum().backward()
        assert all(p.grad is not None for p in attn.parameters())
