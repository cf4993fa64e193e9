"""Attention for bf16 CPU inference with AVX-512 BF16 but no AMX: one of mmdeit's C++ kernels.

On such CPUs (AMD EPYC Zen 4, Intel Cooper Lake) the GEMM attention (``gemm_attention.py``)
runs its two ``bmm`` calls near the CPU's bf16 rate, but around them it copies q, k and v into
the heads' layout, writes the (B*h, n, N) scores to memory, reads them back for the softmax and
again for the second product, and copies the output into the merged heads' layout.
``csrc/bf16_attention.cpp`` computes the same ``softmax(q k^T * scale) v`` as the tile-unit
kernel of AMX CPUs (``amx_attention.py``) does, with the products from ``vdpbf16ps`` register
blocks instead of tiles: one (sample, head) pair at a time, k and v packed once per pair into
bf16 pairs, 16 query rows at a time with their scores (8 x 48 register blocks), softmax and
product with v (6 x 64 blocks) in L1/L2; q, k and v read as views of the qkv GEMM's output, the
output written with the heads merged. What it computes is the GEMM attention's: the scores
rounded to bf16 (the ``bmm``'s output dtype), ``scale`` (a power of two: exact), the fp32 softmax
of ``cpu_kernels.softmax_`` rounded to bf16, the second product accumulated in fp32 and rounded
once; each sum in the order oneDNN's ``bmm`` takes on these CPUs: the same bits up to 512 keys
(DeiT's 197-198 tokens at 224 px; tested), and past that, where oneDNN sums P v in blocks of
keys, one bf16 unit apart in ~1 of 10^5 elements (578 keys, 384 px). One DeiT-S layer's
attention at batch 8 alone (2 cores, AMD EPYC with AVX-512 BF16): 1.59-1.62 ms against the GEMM
form's 1.68-1.70 (copies, products and softmax; its products run near the CPU's ``vdpbf16ps``
rate too); in the model, where the GEMM form's scores and copies go through L3, bf16 inference
is 1.02x-1.04x faster with it by best round, 1.03x-1.06x by paired median (docs/benchmarks.md).

Where it runs: CPUs with AVX-512 BF16 (the kernels' build, ``cpu_kernels.SUPPORTED``) where the
tile-unit kernel does not (no AMX, or its switch off), the switches :data:`USE_BF16_ATTENTION`
and ``cpu_kernels.USE_CPU_KERNELS`` on, bf16 without autograd, heads of 64
(:data:`HEAD_DIMS`), up to ``cpu_kernels.MAX_ROW`` keys, ``scale`` a power of two; compiled
too, inside the ``mmdeit::gemm_attention`` op (the heads passed to it as views). Elsewhere the
GEMM attention runs.
"""

import torch

from . import amx_attention, cpu_kernels

#: :func:`attention` replaces the GEMM attention's copies, products and softmax where it
#: applies; read at every call: set to False for the GEMM attention (the same bits).
USE_BF16_ATTENTION = cpu_kernels.SUPPORTED
#: The head size the kernel takes (``kHead`` of ``csrc/bf16_attention.cpp``).
HEAD_DIMS = 64


def takes_views(head_dims: int) -> bool:
    """Whether a bf16 attention kernel, the tile unit's or this one, would read heads of
    ``head_dims`` as views of the qkv GEMM's output, so that copying them into the heads'
    layout first (``cpu_kernels.split_heads``) is for nothing."""
    return amx_attention.takes_views(head_dims) or _runs(head_dims)


def _runs(head_dims: int) -> bool:
    """Whether this kernel takes bf16 heads of ``head_dims`` where the tile unit's does not:
    the switches on, heads of :data:`HEAD_DIMS`, and the kernels built (while
    ``torch.compile`` traces, a constant of the graph: the heads go to its
    ``mmdeit::gemm_attention`` op as views, which runs the kernel)."""
    return (
        USE_BF16_ATTENTION
        and cpu_kernels.USE_CPU_KERNELS
        and head_dims == HEAD_DIMS
        and cpu_kernels._available()
    )


def attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> bool:
    """Whether :func:`attention` applies: bf16 q (B, h, n, d), k and v (B, h, N, d) on the CPU
    without autograd, each with its last dim contiguous, d = :data:`HEAD_DIMS`, 1 to
    ``cpu_kernels.MAX_ROW`` keys, ``scale`` a power of two, where the tile-unit kernel does
    not run, the switches on and the kernels built."""
    return (
        cpu_kernels._on_cpu_no_grad(q, k, v)
        and cpu_kernels.bf16_attention_fits(q, k, v, scale, HEAD_DIMS)
        and not amx_attention.takes_views(q.shape[-1])
        and _runs(q.shape[-1])
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` with the heads merged, in bf16: q (B, h, n, d), k/v
    (B, h, N, d) -> (B, n, h*d); where :func:`attention_applies` holds."""
    return cpu_kernels.kernels().attention_avx512_bf16(q, k, v, scale)
