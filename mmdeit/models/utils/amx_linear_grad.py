"""The linear layers of bf16 autocast training on AMX CPUs, their weight and bias gradients on
the tile unit: one of mmdeit's C++ kernels.

A linear layer's backward computes ``dx = dy W`` and ``dW = dy^T x``, ``db = sum(dy)`` over the
tokens. On AMX CPUs oneDNN runs the weight gradient's product (an operand transposed, the
tokens as the long inner dim, both operands read from memory) at 870-1,280 GFLOP/s on 2 cores
where the forward's products run at 2,400-3,200, and the bias gradient is a pass over ``dy``
of its own; under autocast both come out in bf16 and are cast to the fp32 parameters' dtype.
``csrc/amx_weight_grad.cpp`` packs chunks of the tokens of x and dy into the tile unit's
layout, sums dy's columns while it packs them, and accumulates ``dW`` in fp32 tiles: both
gradients in fp32, in the parameters' dtype. DeiT-S at batch 32, 2 AMX cores: fc1's weight and
bias gradients in 0.59x oneDNN's time, the four linears of a layer in 0.61x
(docs/benchmarks.md).

:class:`TileLinear` computes what autocast's linear computes in the forward (x, the weight and
the bias cast to bf16, a bf16 linear: ``amx_linear``'s where it applies, the weight packed once
a step and the bias added in its GEMM instead of copied into the output first; else oneDNN's)
and ``dx`` in the backward (a bf16 ``mm``); ``dW`` and ``db`` are the sums of the same bf16
products, accumulated in fp32 and not rounded to bf16 (closer to the exact gradient than
autocast's: tested against fp64). The tile unit's forward made the step at batch 32 1.03x /
1.05x faster than oneDNN's forward (best / median of 6 paired rounds).

Where it runs: :func:`linear`, the fast path's training linears (qkv, the output projection,
fc1, fc2; and the patch embedding as a GEMM, ``patch_gemm.py``), with autograd under bf16 CPU
autocast, fp32 weights whose channels are multiples of 32, a plain ``nn.Linear`` without hooks,
on AMX CPUs with the switches :data:`USE_AMX_WEIGHT_GRAD` and ``cpu_kernels.USE_CPU_KERNELS``
on, not while ``torch.compile`` traces; elsewhere the module runs.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import amx_attention, amx_linear, cpu_kernels
from .cpu_ops import autocast_bf16

#: This CPU has the tile unit (``amx_attention.AMX_SUPPORTED``).
AMX_SUPPORTED = amx_attention.AMX_SUPPORTED
#: :func:`linear` computes the weight and bias gradients on the tile unit where it applies; read
#: at every call: set to False for autocast's linear (``--ablate amx-weight-grad``).
USE_AMX_WEIGHT_GRAD = AMX_SUPPORTED


def applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether :func:`linear` runs :class:`TileLinear`: ``module`` a plain ``nn.Linear`` without
    forward hooks, ``x`` (..., C_in) with tokens, and :func:`weight_applies`."""
    return (
        USE_AMX_WEIGHT_GRAD
        and type(module) is nn.Linear
        and not (module._forward_hooks or module._forward_pre_hooks)
        and x.dim() >= 2
        and x.numel() > 0
        and x.shape[-1] == module.weight.shape[-1]
        and weight_applies(x, module.weight)
    )


def weight_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :class:`TileLinear` takes ``weight`` (C_out, C_in) and an input like ``x`` (its
    device and dtype): autograd on and the weight requiring grad, bf16 CPU autocast, an fp32
    weight with both channel counts multiples of 32, ``x`` fp32 or bf16, not while
    ``torch.compile`` traces, the switches on and the tile unit ready."""
    return (
        USE_AMX_WEIGHT_GRAD
        and AMX_SUPPORTED
        and torch.is_grad_enabled()
        and weight.requires_grad
        and cpu_kernels._on_cpu(x, weight)
        and not torch.compiler.is_compiling()
        and autocast_bf16()
        and weight.dtype == torch.float32
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dim() == 2
        and weight.shape[0] % 32 == 0
        and weight.shape[1] % 32 == 0
        and amx_attention.tile_unit_ready()
    )


def linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``module(x)``: through :class:`TileLinear` where :func:`applies` holds."""
    if applies(x, module):
        return TileLinear.apply(x, module.weight, module.bias)
    return module(x)


class TileLinear(torch.autograd.Function):
    """Autocast's bf16 linear with the weight and bias gradients of the tile-unit kernel:

    y = x W^T + b (bf16),  dx = dy W (bf16),  dW = dy^T x and db = sum(dy) (fp32)

    over the tokens (all but the last dim). x, W and b are cast to bf16 in the forward, as
    autocast casts them; the gradients come back in the inputs' dtypes. The forward is
    ``amx_linear.linear`` where it applies (the same bits as oneDNN's linear but in about 1 of
    10^4 outputs for 1536 input channels, its order of the sums), else oneDNN's."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        bf16 = torch.bfloat16
        x16, w16 = x.to(bf16), weight.to(bf16)  # autocast's casts
        if amx_linear.applies(x16, weight):  # the tile unit's forward: the bias in its GEMM
            out = amx_linear.linear(x16, weight, bias)  # (..., C_out)
        else:
            out = F.linear(x16, w16, None if bias is None else bias.to(bf16))  # (..., C_out)
        ctx.save_for_backward(x16, w16)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x16, w16 = ctx.saved_tensors
        c_out, c_in = w16.shape
        dy = grad.to(torch.bfloat16).reshape(-1, c_out)  # (M, C_out)
        if dy.stride(-1) != 1:
            dy = dy.contiguous()
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.mm(dy, w16).view(x16.shape)  # (..., C_in) bf16, cast to x's dtype
        x2d = x16.reshape(-1, c_in)  # (M, C_in)
        if x2d.stride(-1) != 1:
            x2d = x2d.contiguous()
        dw, db = cpu_kernels.kernels().amx_weight_grad_bf16(x2d, dy, ctx.has_bias)
        return dx, dw, db if ctx.has_bias else None
