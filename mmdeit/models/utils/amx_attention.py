"""Attention on the AMX tile unit, for bf16 inference and training: one of mmdeit's C++ kernels.

On AMX CPUs the GEMM attention's two ``bmm`` calls run at a fraction of the tile unit's rate
(~780 GFLOP/s on 2 cores, 48 products of 198 x 64 by 64 x 198 a call), and around them the
attention writes its (B*h, n, N) scores to memory, reads them back for the softmax and again
for the second product, after copying q, k and v into the heads' layout and before copying
the output into the merged one. ``csrc/amx_attention.cpp`` computes ``softmax(q k^T * scale)
v`` for one (sample, head) pair at a time, 16 query rows at a time: the scores of those rows in
fp32 tiles, their softmax, and their product with v, all in L1/L2; q, k and v read as views of
the qkv GEMM's output, the output written with the heads merged. It computes what the GEMM
attention computes: the scores rounded to bf16 (the ``bmm``'s output dtype), ``scale`` (a power
of two: exact), the fp32 softmax of ``cpu_kernels.softmax_`` rounded to bf16, the second product
accumulated in fp32 and rounded once: the same bits (tested). DeiT-S, bf16 autocast, batch 8,
2 cores with AMX: with the GEMM attention instead the model takes 1.05x-1.13x the time
(docs/benchmarks.md).

Where it runs: CPUs with AMX's bf16 tile unit (:data:`AMX_SUPPORTED`), the switch
:data:`USE_AMX_ATTENTION` and ``cpu_kernels.USE_CPU_KERNELS`` on, heads of 64
(:data:`HEAD_DIMS`, every DeiT and ViT arch shipped), and Linux lets the process use the tile
registers (asked once, as PyTorch's oneDNN does). Built with the other kernels
(``cpu_kernels.kernels``); elsewhere the GEMM attention runs. With autograd (training) the
kernel also writes the softmax's output for the backward, which runs on the tile unit too
(``amx_attention_grad.py``).
"""

from typing import Optional

import torch

from . import amx_attention_grad, cpu_kernels
from .cpu_ops import cpu_supports

#: This CPU has the tile unit (checked once, at import; torch reports ``amx_tile``, and every
#: CPU with it so far, Sapphire Rapids on, has its bf16 products).
AMX_SUPPORTED = cpu_kernels.SUPPORTED and cpu_supports('amx_tile')
#: :func:`attention` replaces the GEMM attention's products and softmax where it applies; read
#: at every call: set to False for the GEMM attention (the same bits).
USE_AMX_ATTENTION = AMX_SUPPORTED
#: The head size the kernel takes (``kHead`` of ``csrc/amx_attention.cpp``).
HEAD_DIMS = 64

_ready: Optional[bool] = None


def tile_unit_ready() -> bool:
    """Whether the tile-unit kernels can run (this one and ``amx_linear.py``'s): the kernels are
    built (the first call builds) and Linux gave this process the tile registers (asked once)."""
    global _ready
    if _ready is None:
        built = cpu_kernels.kernels()
        if built is None:
            return False
        _ready = bool(built.amx_attention_ready())
    return _ready


@torch.compiler.assume_constant_result
def _tile_unit_ready_when_traced() -> bool:
    """:func:`tile_unit_ready` as a constant of a ``torch.compile`` graph."""
    return tile_unit_ready()


def takes_views(head_dims: int) -> bool:
    """Whether :func:`attention` takes heads of ``head_dims`` as views of the qkv GEMM's output,
    so that copying them into the heads' layout (``cpu_kernels.split_heads``) is for nothing:
    the switches on, an AMX CPU, heads of :data:`HEAD_DIMS`, the kernels built."""
    return (
        cpu_kernels.USE_CPU_KERNELS
        and USE_AMX_ATTENTION
        and AMX_SUPPORTED
        and head_dims == HEAD_DIMS
        and (_tile_unit_ready_when_traced() if torch.compiler.is_compiling() else tile_unit_ready())
    )


def attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> bool:
    """Whether :func:`attention` applies: bf16 q (B, h, n, d), k and v (B, h, N, d) on the CPU,
    each with its last dim contiguous, d = :data:`HEAD_DIMS`, 1 to ``cpu_kernels.MAX_ROW``
    keys, ``scale`` a power of two, and :func:`takes_views` holds; with autograd too, but not
    while ``torch.compile`` traces it (its op has no backward)."""
    return (
        cpu_kernels._on_cpu(q, k, v)  # the other kernels' condition, but autograd
        and not (torch.is_grad_enabled() and torch.compiler.is_compiling())
        and cpu_kernels.bf16_attention_fits(q, k, v, scale, HEAD_DIMS)
        and takes_views(q.shape[-1])
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` with the heads merged, on the tile unit: q (B, h, n, d),
    k/v (B, h, N, d) -> (B, n, h*d) bf16; where :func:`attention_applies` holds. With autograd
    (any input requiring grad) through ``amx_attention_grad``'s autograd functions."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return amx_attention_grad.attention(q, k, v, scale)
    return cpu_kernels.kernels().attention_bf16(q, k, v, scale)
