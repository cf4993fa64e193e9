"""Attention for fp32 CPU inference in registers and L1/L2: one of mmdeit's C++ kernels.

In fp32 the fast path's attention is PyTorch's CPU flash kernel (SDPA), which ran at ~180
GFLOP/s on 2 AVX-512 cores for DeiT-S's 198 tokens where the fp32 GEMMs run at ~360: 13-14 % of
the fp32 forward (DeiT-S, batch 8, docs/benchmarks.md). ``csrc/fp32_attention.cpp`` computes
``softmax(q k^T * scale) v`` for one (sample, head) pair at a time, 12 query rows at a time (the
last rows a block of 6 where 6 or fewer remain): k^T packed once per pair, the scores of the
rows from FMA register blocks (12 rows x 32 keys; an odd count of 16-key vectors ends with 48
keys in blocks of 6 rows), their rows' maxima taken as they are stored, exp(S - max) in place
(``exp_u20``, the fast exp the flash kernel uses too) and each row's sum, and the product with v
from register blocks of 6 rows x 64 divided by the sums, written into the heads-merged output;
q, k and v read as the views of the qkv GEMM's output they are. The same math as SDPA in fp32,
the sums in another order: against an fp64 reference both are ~1e-6 off (tested against SDPA to
1e-5). One DeiT-S layer at batch 8 on 2 AMX-host cores: 1.75-1.82 ms against SDPA's 2.68-2.73
with the blocks of 6 rows and 48 keys (the first version: 1.86, and 1.78 against 1.66
interleaved), 2-3 % less with the maxima taken in the scores' pass and the division after P v;
the model 1.067x faster with the first (paired; docs/benchmarks.md, "fp32 inference: the
attention in registers"). Measured on that host only: on AVX-512 BF16 CPUs without AMX it is on
too, unmeasured there (``--ablate fp32-attention`` tells).

Where it runs: CPUs with AVX-512 BF16 (the kernels' build, ``cpu_kernels.SUPPORTED``), the
switches :data:`USE_FP32_ATTENTION` and ``cpu_kernels.USE_CPU_KERNELS`` on, fp32 without
autograd, heads of 64 (:data:`HEAD_DIMS`, every DeiT and ViT arch shipped), up to
``cpu_kernels.MAX_ROW`` keys, eager (under ``torch.compile`` the compiler's own attention).
Elsewhere SDPA runs.
"""

import torch

from . import cpu_kernels

#: :func:`attention` replaces SDPA in fp32 CPU inference where it applies; read at every call:
#: set to False for SDPA (the same math, summed in another order).
USE_FP32_ATTENTION = cpu_kernels.SUPPORTED
#: The head size the kernel takes (``kHead`` of ``csrc/fp32_attention.cpp``).
HEAD_DIMS = 64


def attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    """Whether :func:`attention` applies: fp32 q (B, h, n, d), k and v (B, h, N, d) on the CPU
    without autograd, each with its last dim contiguous, d = :data:`HEAD_DIMS`, 1 to
    ``cpu_kernels.MAX_ROW`` keys, no attention dropout, not while ``torch.compile`` traces, the
    switches on and the kernels built (the first call builds)."""
    return (
        USE_FP32_ATTENTION
        and cpu_kernels._on_cpu_no_grad(q, k, v)
        and not torch.compiler.is_compiling()
        and dropout_p == 0.0
        and q.dtype == k.dtype == v.dtype == torch.float32
        and cpu_kernels.attention_fits(q, k, v, HEAD_DIMS)
        and cpu_kernels.kernels() is not None
    )


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` with the heads merged, in fp32: q (B, h, n, d), k/v
    (B, h, N, d) -> (B, n, h*d); where :func:`attention_applies` holds."""
    return cpu_kernels.kernels().attention_fp32(q, k, v, scale)
