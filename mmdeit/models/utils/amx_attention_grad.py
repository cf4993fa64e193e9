"""The tile-unit attention with autograd, for bf16 training on AMX CPUs.

The forward is ``amx_attention``'s inference kernel, which also writes the softmax's output P
(B, h, n, N) in bf16, the tensor the GEMM attention keeps for its backward. The backward:

    dV = P^T dO,  dP = dO V^T * scale,  dS = P * (dP - rowsum(dP * P)),  dQ = dS K,  dK = dS^T Q

(``scale`` a power of two: exact in bf16, so dS comes out scaled.) Two forms of it, chosen by
:data:`USE_AMX_ATTENTION_GRAD` at every backward:

* **on the tile unit** (``csrc/amx_attention_grad.cpp``): one (sample, head) pair at a time,
  16 query rows at a time, everything in L1/L2: dP in fp32 tiles, dS from it and P (ATen's bf16
  softmax backward: the row sum in fp32), dQ from the tiles, dS and P transposed for dK and dV.
  The same products and bf16 roundings as the GEMM form (only fp32 sums in another order:
  tested against it). It reads dO with the heads merged and q, k, v as the views they are, and
  writes dQ, dK, dV where the gradient's strides say: where q, k and v are the three views of
  one qkv GEMM output (the model's case, :func:`qkv_of`), straight into that output's gradient
  (:class:`QKVTileAttention`), so autograd neither stacks the three nor copies the stack back
  through the heads' permute. DeiT-S at batch 32, one layer on 2 AMX cores: 6.0-7.4 ms against
  12.5-25 ms for the GEMM form and its copies; the training step 1.09x-1.15x faster
  (docs/benchmarks.md);
* **the GEMM form** (:func:`gemm_backward`): five bf16 ``bmm`` calls from P around ATen's
  softmax backward, dO, q, k and v copied into the heads' layout.
"""

from typing import Optional, Tuple

import torch

from . import cpu_kernels

#: The backward on the tile unit; read at every backward: set to False for the GEMM form (within
#: bf16 rounding of each other).
USE_AMX_ATTENTION_GRAD = True

Grads = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def qkv_of(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[torch.Tensor]:
    """The (B, N, 3*h*d) tensor whose views q (B, h, n, d: its first n rows), k and v
    (B, h, N, d) are, as the layer's ``_split_heads`` makes them from the qkv GEMM's output (a
    contiguous bf16 tensor in the autograd graph); None where they are not, or where their base
    is not in the graph (the output of an autograd function that is a view of a tensor made in
    its forward, as oneDNN's linear of a 3-D input gives: its gradient would not reach the
    function)."""
    base = q._base
    if base is None or k._base is not base or v._base is not base or not base.is_contiguous():
        return None
    if not base.requires_grad:  # made inside another op's forward (a view of its output)
        return None
    B, h, n, d = q.shape
    N = k.shape[2]
    C = h * d
    layout = (N * 3 * C, d, 3 * C, 1)  # (B, N, 3, h, d) permuted to (3, B, h, N, d)
    start = base.data_ptr()
    return (
        base.view(B, N, 3 * C)
        if base.numel() == B * N * 3 * C
        and n <= N
        and all(t.stride() == layout for t in (q, k, v))
        and [t.data_ptr() - start for t in (q, k, v)] == [0, 2 * C, 4 * C]  # bf16: 2 bytes
        else None
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``amx_attention.attention`` with autograd: q (B, h, n, d), k/v (B, h, N, d) -> (B, n,
    h*d) bf16, through :class:`QKVTileAttention` where :func:`qkv_of` finds their qkv tensor,
    else :class:`TileAttention`."""
    qkv = qkv_of(q, k, v)
    if qkv is not None:
        return QKVTileAttention.apply(qkv, q.shape[1], q.shape[2], scale)
    return TileAttention.apply(q, k, v, scale)


def _forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """The inference kernel, P written for the backward; what both functions save."""
    B, h, n, _ = q.shape
    probs = q.new_empty(B, h, n, k.shape[2])  # (B, h, n, N)
    out = cpu_kernels.kernels().attention_bf16(q, k, v, scale, probs)  # (B, n, h*d)
    ctx.scale = scale
    return out, probs


def _backward(grad, q, k, v, probs, scale: float, into: Optional[Grads] = None) -> Grads:
    """dQ, dK, dV, written into ``into`` (tensors of q's, k's, v's shapes, any strides with the
    last dim contiguous) where given."""
    if USE_AMX_ATTENTION_GRAD:
        if into is None:
            into = tuple(
                torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v)
            )
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        cpu_kernels.kernels().attention_backward_bf16(grad, q, k, v, probs, scale, *into)
        return into
    grads = gemm_backward(grad, q, k, v, probs, scale)
    if into is None:
        return grads
    for dst, src in zip(into, grads):
        dst.copy_(src)
    return into


class TileAttention(torch.autograd.Function):
    """The tile-unit attention of q, k, v (any views with their last dim contiguous): their
    gradients in new tensors."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        out, probs = _forward(ctx, q, k, v, scale)
        ctx.save_for_backward(q, k, v, probs)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (*_backward(grad, *ctx.saved_tensors, ctx.scale), None)


def _heads(qkv: torch.Tensor, heads: int, num_queries: int) -> Grads:
    """q (its first ``num_queries`` rows), k, v: views (B, h, ., d) of qkv (B, N, 3*C)."""
    B, N, C3 = qkv.shape
    q, k, v = qkv.view(B, N, 3, heads, C3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return q[:, :, :num_queries], k, v


class QKVTileAttention(torch.autograd.Function):
    """The tile-unit attention of the q, k, v views of one qkv tensor (B, N, 3*h*d), q its
    first ``num_queries`` rows (:func:`qkv_of`): the backward writes qkv's gradient whole."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, num_queries: int, scale: float):
        out, probs = _forward(ctx, *_heads(qkv, heads, num_queries), scale)
        ctx.save_for_backward(qkv, probs)
        ctx.heads, ctx.num_queries = heads, num_queries
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qkv, probs = ctx.saved_tensors
        dqkv = torch.empty_like(qkv)  # (B, N, 3*C)
        into = _heads(dqkv, ctx.heads, ctx.num_queries)
        if ctx.num_queries < qkv.shape[1]:  # the rows of q that were not read
            dqkv[:, ctx.num_queries :, : qkv.shape[2] // 3].zero_()
        _backward(grad, *_heads(qkv, ctx.heads, ctx.num_queries), probs, ctx.scale, into)
        return dqkv, None, None, None


def gemm_backward(grad, q, k, v, probs, scale: float) -> Grads:
    """dQ, dK, dV in bf16 ``bmm`` calls from P: the GEMM attention's backward (the scale applied
    by the GEMM that writes dP, alpha: dS comes out scaled, the same bits as scaling the copies
    of K and Q, which took 2.5x a plain copy)."""
    B, h, n, d = q.shape
    N = k.shape[2]
    do = grad.reshape(B, n, h, d).transpose(1, 2).reshape(B * h, n, d)  # a copy
    p = probs.view(B * h, n, N)
    dv = torch.bmm(p.transpose(1, 2), do)  # (B*h, N, d)
    v_t = v.reshape(B * h, N, d).transpose(1, 2)  # (B*h, d, N), a copy
    dp = torch.baddbmm(p.new_empty(B * h, n, N), do, v_t, beta=0, alpha=scale)
    ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # dS * scale
    dq = torch.bmm(ds, k.reshape(B * h, N, d))  # (B*h, n, d); k's copy
    dk = torch.bmm(ds.transpose(1, 2), q.reshape(B * h, n, d))  # (B*h, N, d); q's copy
    shape = (B, h, -1, d)
    return dq.view(shape), dk.view(shape), dv.view(shape)
