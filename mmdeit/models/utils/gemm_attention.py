"""Attention as two batched GEMMs and a softmax, for bf16 on the CPU.

``softmax(q k^T / sqrt(d)) v`` written out: ``bmm``, ``softmax``, ``bmm``. On the CPUs of
``docs/benchmarks.md`` (AVX-512 BF16) PyTorch's CPU flash-attention kernel is no faster in bf16
than in fp32 (about 60 GFLOP/s on one core for DeiT-S's 198 tokens), while bf16 GEMMs run at
about 200: once the linear layers are in bf16, attention takes a fifth of the forward. With
the whole (B*h, n, N) score matrix in memory (0.4 MB per sample and layer for DeiT-S in bf16)
the two products run as oneDNN bf16 GEMMs and the whole attention takes about 60 % of the
flash kernel's time. In fp32 the flash kernel is the faster one and stays.

The products are the ones SDPA computes in bf16 (bf16 inputs, fp32 accumulation); the softmax
is computed in fp32 inside the kernel and rounded to bf16 for the second GEMM, as flash does;
``q / sqrt(d)`` is rounded to bf16 first (exact for power-of-4 head sizes: 16, 64, 256).

Without autograd the softmax writes its output into the scores' memory (:data:`IN_PLACE_SOFTMAX`,
``softmax(out=)`` on its own input; the kernel reads each row before it writes it): the same
bits (tested), one tensor of (B*h, n, N) less per layer, and that memory still in cache for the
second GEMM. Measured on an AVX-512 BF16 host (docs/benchmarks.md): DeiT-S bf16 inference
0.90-0.98x the time at batch 8, 0.97-0.99x at batch 1.

**The scale folded into q's projection** (:data:`FOLD_Q_SCALE`, :func:`q_scale_folds`): without
autograd, where the qkv projection runs through oneDNN in bf16 and ``1/sqrt(d)`` is a power of
two (d = 4, 16, 64, 256), the projection's kept weight copies have their q rows scaled
(``onednn_linear(..., scale_rows=...)``), so q leaves the GEMM scaled and is only made
contiguous here (``scale=1``), instead of a bf16 multiply of a strided view (79 against 19 µs
for DeiT-S at batch 8, alone). A power-of-two factor commutes with every rounding, so q has
the same bits (tested). Under ``torch.compile`` too: the scale rows are arguments of the op
``mmdeit::onednn_linear`` (compiled DeiT-S, bf16 batch 8: 0.99x the time, the same bits).

**On AMX CPUs the whole computation runs on the tile unit** (``amx_attention.attention``, where
``amx_attention.attention_applies``): 16 query rows at a time with their scores, softmax and
products in L1/L2, the same bits as the two ``bmm`` and the softmax here, q, k and v read as
views of the qkv GEMM's output (no copies) and the heads merged as it writes (DeiT-S, bf16
batch 8: the model 1.05x-1.13x faster, docs/benchmarks.md). On AVX-512 BF16 CPUs without AMX
the same computation runs in ``vdpbf16ps`` register blocks (``bf16_attention.attention``,
where ``bf16_attention.attention_applies``): the same bits as here.
"""

import math

import torch
import torch.nn as nn

from . import amx_attention as amx
from . import bf16_attention, cpu_kernels
from . import onednn_linear as onednn
from .cpu_ops import define_cpu_op, plain_ops_traced

#: Device types where the GEMM form replaces SDPA for bf16.
GEMM_DEVICE_TYPES = frozenset({'cpu'})
#: Without autograd the softmax writes into the scores' memory instead of a new tensor; set
#: to False for a new tensor (the same numbers).
IN_PLACE_SOFTMAX = True
#: Where :func:`q_scale_folds` holds, q comes out of the qkv GEMM already scaled; set to False
#: to scale it here (the same numbers).
FOLD_Q_SCALE = True


def gemm_attention_applies(q: torch.Tensor, dropout_p: float = 0.0) -> bool:
    """Whether :func:`gemm_attention` is the faster form: bf16 on the CPU, no attention
    dropout; while ``torch.compile`` traces, only without autograd (then it is one op of the
    graph, which has no backward; with autograd the compiler picks its own kernels), and not
    where :func:`~.cpu_ops.plain_ops_traced` holds."""
    return (
        q.dtype == torch.bfloat16
        and q.device.type in GEMM_DEVICE_TYPES
        and dropout_p == 0.0
        and not (torch.compiler.is_compiling() and torch.is_grad_enabled())
        and not plain_ops_traced(q)  # inductor's freezing on an AMX CPU: SDPA (cpu_ops.py)
    )


def q_scale_folds(x: torch.Tensor, qkv: nn.Linear, scale: float, dropout_p: float) -> bool:
    """Whether the attention's ``scale`` can be folded into the q rows of ``qkv`` for the input
    ``x`` (:data:`FOLD_Q_SCALE`): the projection runs through oneDNN in bf16 (no autograd;
    eager, or compiled as ``mmdeit::onednn_linear``), ``scale`` is a power of two and no
    attention dropout is active, so that q is bf16 on the CPU and the attention is
    :func:`gemm_attention`'s."""
    return (
        FOLD_Q_SCALE
        and math.frexp(scale)[0] == 0.5  # a power of two: exact
        and dropout_p == 0.0
        and 'cpu' in GEMM_DEVICE_TYPES
        and onednn.onednn_applies(x, qkv)
        and onednn.computes_in_bf16(x, qkv)
    )


def gemm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v``, heads merged: q (B, h, n, d), k/v (B, h, N, d) -> (B, n, h*d).

    While ``torch.compile`` traces it is one op, ``torch.ops.mmdeit.gemm_attention``: traced as
    its ops, inductor's pattern matcher turns them back into SDPA, whose CPU flash kernel is the
    slow one in bf16 (about 3x this form's time per layer, docs/benchmarks.md).

    Args:
        q: Queries (B, h, n, d), any strides.
        k: Keys (B, h, N, d), any strides.
        v: Values (B, h, N, d), any strides.
        scale: The factor of the scores, ``d ** -0.5`` in ViT; 1 for a q already scaled.
    """
    if torch.compiler.is_compiling():
        return torch.ops.mmdeit.gemm_attention(q, k, v, scale)
    return _gemm_attention(q, k, v, scale)


def _gemm_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`gemm_attention`'s computation."""
    if amx.attention_applies(q, k, v, scale):  # all of it on the tile unit (amx_attention.py)
        return amx.attention(q, k, v, scale)  # (B, n, C)
    if bf16_attention.attention_applies(q, k, v, scale):  # AVX-512 BF16 without AMX
        return bf16_attention.attention(q, k, v, scale)  # (B, n, C)
    B, h, n, d = q.shape
    N = k.shape[2]
    with torch.autocast(q.device.type, enabled=False):  # the inputs' dtype throughout
        if torch.is_grad_enabled() and q.requires_grad:  # out= has no autograd
            q = (q * scale).contiguous().view(B * h, n, d)
        elif scale == 1.0:  # scaled by its projection (q_scale_folds)
            q = q.contiguous().view(B * h, n, d)
        else:  # scaled and made contiguous in one pass
            q = torch.mul(q, scale, out=q.new_empty(B, h, n, d)).view(B * h, n, d)
        k = k.contiguous().view(B * h, N, d)
        v = v.contiguous().view(B * h, N, d)
        attn = torch.bmm(q, k.transpose(1, 2))  # (B*h, n, N)
        # over the rows of a 2-D view: CPU softmax splits its work better there (1.4x here)
        rows = attn.view(-1, N)  # (B*h*n, N)
        if cpu_kernels.softmax_applies(rows):  # in place, one pass a row (cpu_kernels.py)
            cpu_kernels.softmax_(rows)
        elif IN_PLACE_SOFTMAX and not (torch.is_grad_enabled() and rows.requires_grad):
            torch.softmax(rows, dim=-1, out=rows)  # into the scores' memory
        else:
            attn = rows.softmax(dim=-1).view(B * h, n, N)
        out = torch.bmm(attn, v).view(B, h, n, d)
    return out.transpose(1, 2).reshape(B, n, h * d)  # (B, n, C), a copy


def _gemm_attention_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """The op ``mmdeit::gemm_attention``: :func:`_gemm_attention` as one op of a compiled graph
    (inference only: no backward)."""
    return _gemm_attention(q, k, v, scale)


def _gemm_attention_fake(q, k, v, scale):
    B, h, n, d = q.shape
    return q.new_empty((B, n, h * d))


define_cpu_op(
    'gemm_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor',
    _gemm_attention_kernel,
    _gemm_attention_fake,
)
