"""The patch embedding as one GEMM on the patches, on the CPU.

A convolution whose kernel is its stride (ViT's patch embedding) is a linear layer on the
non-overlapping patches: (B, C, H, W) -> patches (B, H/p * W/p, C*p*p), one copy, times the
weight seen as (E, C*p*p). On the AMX host of ``docs/benchmarks.md`` oneDNN's bf16 convolution
took 1.35 ms for DeiT-S's (3 -> 384, 16 x 16) at batch 8, the GEMM form with its copy 0.70, and
the GEMM writes the tokens contiguous, where the convolution's come as a strided (B, HW, E) view
that the next concatenation copies. The products are the convolution's, summed in another
order (fp32: rounding-level differences; bf16: the same bf16 inputs, fp32 accumulation, one
rounding). :data:`USE_PATCH_GEMM` is the switch; without autograd, or with it where the weight
gradient runs on the AMX tile unit (``amx_linear_grad.TileLinear``: bf16 autocast training;
the convolution's backward took 18-26 ms of a DeiT-S step at batch 32 on 2 cores); on the CPU,
where the input's size is a multiple of the patch (mmcv's adaptive padding adds nothing), and
not in inductor's frozen AMX graph (``cpu_ops.plain_ops_traced``: the reference's ops are
traced). In bf16 inference on AMX CPUs the eager GEMM is ``amx_linear``'s (the weight rounded
and packed once, kept; autocast's ``F.linear`` casts it in every call).
"""

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import amx_linear, amx_linear_grad
from .cpu_ops import plain_ops_traced

#: The patch embedding runs as a GEMM where :func:`gemm_applies` holds; read at every call: set
#: to False for mmcv's convolution (the same function).
USE_PATCH_GEMM = True


def gemm_applies(patch_embed: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`embed` computes ``patch_embed(x)`` as a GEMM: the switch on, no autograd
    (or with autograd where ``amx_linear_grad`` takes the weight: bf16 autocast training on AMX
    CPUs), a CPU input (B, C, H, W) with H and W multiples of the patch, and a plain
    ``nn.Conv2d`` projection whose kernel is its stride (no padding, dilation or groups)."""
    conv = getattr(patch_embed, 'projection', None)
    return (
        USE_PATCH_GEMM
        and x.device.type == 'cpu'
        and type(conv) is nn.Conv2d
        and x.dim() == 4
        and conv.kernel_size == conv.stride
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and x.shape[2] % conv.kernel_size[0] == 0
        and x.shape[3] % conv.kernel_size[1] == 0
        and not plain_ops_traced(x)
        and (
            not torch.is_grad_enabled() or amx_linear_grad.weight_applies(x, conv.weight.flatten(1))
        )
    )


def embed(
    patch_embed: nn.Module, x: torch.Tensor, fast: bool = True
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """mmcv ``PatchEmbed``'s ``(tokens (B, h*w, E), (h, w))`` for images ``x`` (B, C, H, W): as
    a GEMM on the patches where ``fast`` (default True: a backbone's ``fast_path``) and
    :func:`gemm_applies` hold, else ``patch_embed(x)``."""
    if not (fast and gemm_applies(patch_embed, x)):
        return patch_embed(x)
    conv = patch_embed.projection
    B, C, H, W = x.shape
    ph, pw = conv.kernel_size
    h, w = H // ph, W // pw
    if torch.is_autocast_enabled('cpu'):  # the convolution's input cast, before the copy
        x = x.to(torch.get_autocast_dtype('cpu'))
    patches = x.reshape(B, C, h, ph, w, pw).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, ph, pw)
    patches = patches.reshape(B, h * w, C * ph * pw)  # a copy, in the weight's (C, ph, pw) order
    weight = conv.weight.reshape(conv.out_channels, -1)  # (E, C*ph*pw), a view
    if torch.is_grad_enabled():  # training: the weight gradient on the tile unit
        tokens = amx_linear_grad.TileLinear.apply(patches, weight, conv.bias)  # (B, hw, E)
    # bf16 on AMX CPUs, eager: the weight packed once, kept (compiled: inductor's linear)
    elif not torch.compiler.is_compiling() and amx_linear.applies(patches, weight):
        tokens = amx_linear.linear(patches, conv.weight, conv.bias)  # (B, hw, E)
    else:
        tokens = F.linear(patches, weight, conv.bias)  # (B, hw, E)
    if patch_embed.norm is not None:
        tokens = patch_embed.norm(tokens)
    return tokens, (h, w)
