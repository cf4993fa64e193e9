"""The pre-norms of bf16 autocast training on AVX-512 BF16 CPUs: written in bf16, with a
backward from the bf16 gradient; two of mmdeit's C++ kernels.

Under autocast LayerNorm computes in fp32 (autocast's fp32 list) and the linear after it casts
its output to bf16: the forward writes the fp32 output, reads it and writes the bf16 copy; the
backward casts the linear's bf16 input gradient to fp32 before ATen's LayerNorm backward reads
it. :class:`TrainLayerNorm` computes the same: the forward is the inference kernel
(``cpu_kernels.layer_norm_bf16``: LayerNorm in fp32 rounded once to bf16, autocast's bits),
which also writes each row's mean and 1/std; the backward (``csrc/layer_norm_grad.cpp``) reads
the bf16 gradient and writes dx in fp32 (the residual stream's dtype), dw and db summed in fp32:
ATen's formula, its sums in another order (tested against ATen's and fp64). DeiT-S, batch 32,
2 AMX cores: the training step with autocast's LayerNorm and casts instead took 1.04x / 1.03x
the time (best / median of 6 paired rounds; docs/benchmarks.md).

Where it runs: :func:`pre_norm`, the fast path's pre-norms (``ln1``, ``ln2``), with autograd
under bf16 CPU autocast: a plain ``nn.LayerNorm`` over the last dim (up to
``cpu_kernels.MAX_ROW`` channels) with fp32 weight and bias and no hooks, a contiguous fp32
input, not while ``torch.compile`` traces, the switches :data:`USE_LAYER_NORM_GRAD` and
``cpu_kernels.USE_CPU_KERNELS`` on and the kernels built; elsewhere ``cpu_kernels.pre_norm``
(inference) or the module runs.
"""

from typing import Optional

import torch
import torch.nn as nn

from . import cpu_kernels

#: :func:`pre_norm` runs :class:`TrainLayerNorm` where it applies; read at every call: set to
#: False for autocast's LayerNorm and casts (``--ablate layer-norm-grad``).
USE_LAYER_NORM_GRAD = cpu_kernels.SUPPORTED


def applies(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether :func:`pre_norm` runs :class:`TrainLayerNorm` (see the module's docstring)."""
    return (
        USE_LAYER_NORM_GRAD
        and torch.is_grad_enabled()
        and cpu_kernels._on_cpu(x)
        and not torch.compiler.is_compiling()
        and not (norm._forward_hooks or norm._forward_pre_hooks)
        and cpu_kernels.layer_norm_fits(x, norm)  # the forward kernel's conditions
    )


def pre_norm(norm: nn.Module, x: torch.Tensor, kept: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``norm(x)`` for a linear layer that computes in bf16 under autocast: with autograd by
    :class:`TrainLayerNorm` where :func:`applies` holds, else ``cpu_kernels.pre_norm`` (bf16
    inference, or the module). (B, ..., C) -> (B, ..., C); with ``kept`` (b,) int64, the norm
    of samples ``x[kept]`` only, (b, ..., C): stochastic depth's kept samples, read where they
    are by the kernel (no gathered copy of them, and in the backward their gradient written
    into x's rows, zero for the other samples, instead of a zeroed tensor it is added into)."""
    if applies(x, norm):
        return TrainLayerNorm.apply(x, norm.weight, norm.bias, norm.eps, kept)
    return cpu_kernels.pre_norm(norm, x if kept is None else x.index_select(0, kept))


class TrainLayerNorm(torch.autograd.Function):
    """``layer_norm(x).to(bfloat16)`` of a fp32 ``x`` (..., C) with its fp32 weight and bias;
    the gradients from the output's bf16 gradient, in fp32:

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * w,  dw = sum(dy * xhat),
    db = sum(dy)

    the means over the channels, the sums over the rows; xhat, the mean and rstd the forward's.

    With ``kept`` (b,) int64 the norm of samples ``x[kept]`` (b, ..., C), dx zero for the others.
    """

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        eps: float,
        kept: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if kept is not None:
            rows = rows // x.shape[0] * kept.numel()
        stats = x.new_empty(rows, 2)  # (rows, 2): mean, 1/std
        # (b, ..., C) bf16
        out = cpu_kernels.kernels().layer_norm_bf16(x, weight, bias, eps, stats, kept)
        ctx.save_for_backward(x, weight, stats, kept)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, stats, kept = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).contiguous()  # the linear's: bf16, contiguous
        built = cpu_kernels.kernels()
        dx, dw, db = built.layer_norm_backward_bf16(grad, x, stats, weight, kept)
        return dx, dw, db, None, None
