"""Stochastic depth's residual sum under bf16 autocast in one pass each way: one of mmdeit's
C++ kernels (``csrc/drop_add.cpp``).

``skip_dropped_samples`` (``drop_path.py``) computes a residual branch for the kept samples
only and adds it, scaled by ``1/keep``, into the fp32 residual stream:
``identity.index_add(0, kept, branch.float(), alpha)``. In ATen that is four passes over a
(B, N, C) tensor in the forward (the branch cast to fp32, the stream copied, the kept rows
added) and three in the backward (the gradient's kept rows gathered, multiplied by alpha, cast
to bf16 for the branch). :func:`drop_add` does each direction in one pass: the stream read, the
kept samples' bf16 branch rows added with the same fp32 FMA, the sum written; the branch's
gradient ``bf16(alpha * grad[kept])`` written from the stream's gradient (which the stream
itself takes as it is). The same bits as the ATen form (tested).

Where it runs: :data:`USE_DROP_ADD` and ``cpu_kernels.USE_CPU_KERNELS`` on, the kernels built,
a contiguous fp32 stream and a contiguous bf16 branch on the CPU (bf16 autocast training);
elsewhere the ATen form.
"""

from typing import Optional

import torch

from . import cpu_kernels

#: :func:`drop_add` through the kernels where they apply; read at every call: set to False for
#: ATen's ops (the same bits).
USE_DROP_ADD = True


def drop_add_applies(identity: torch.Tensor, branch: torch.Tensor) -> bool:
    """Whether the kernels take this sum: :data:`USE_DROP_ADD`, an fp32 ``identity`` and a bf16
    ``branch`` (contiguous, one sample shape) on the CPU, not while ``torch.compile`` traces,
    the kernels built."""
    return (
        USE_DROP_ADD
        and cpu_kernels._on_cpu(identity, branch)
        and not torch.compiler.is_compiling()
        and identity.dtype == torch.float32
        and branch.dtype == torch.bfloat16
        and identity.shape[1:] == branch.shape[1:]
        and identity.is_contiguous()
        and branch.is_contiguous()
        and cpu_kernels.kernels() is not None
    )


def drop_add(
    identity: torch.Tensor, branch: torch.Tensor, kept: Optional[torch.Tensor], alpha: float
) -> torch.Tensor:
    """``identity`` with ``alpha * branch[j]`` added to its sample ``kept[j]``, in
    ``identity``'s dtype: identity (B, ...), branch (b, ...), kept (b,) int64 (None: b = B, every
    sample). With autograd through :class:`DropAdd` where :func:`drop_add_applies` holds."""
    if drop_add_applies(identity, branch):
        return DropAdd.apply(identity, branch, kept, alpha)
    branch = branch.to(identity.dtype)
    if kept is None:
        return torch.add(identity, branch, alpha=alpha)
    return identity.index_add(0, kept, branch, alpha=alpha)


class DropAdd(torch.autograd.Function):
    """:func:`drop_add` in the kernels: the stream's gradient passed on as it is, the branch's
    ``bf16(alpha * grad[kept])``."""

    @staticmethod
    def forward(ctx, identity, branch, kept: Optional[torch.Tensor], alpha: float):
        ctx.save_for_backward(kept)
        ctx.alpha = alpha
        return cpu_kernels.kernels().drop_add_bf16(identity, branch, kept, alpha)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        branch_grad = None
        if ctx.needs_input_grad[1]:
            branch_grad = cpu_kernels.kernels().scaled_rows_bf16(grad.contiguous(), kept, ctx.alpha)
        return grad, branch_grad, None, None
