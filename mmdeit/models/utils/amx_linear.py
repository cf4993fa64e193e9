"""Linear layers on the AMX tile unit for bf16 inference, with what follows them fused in: one
of mmdeit's C++ kernels.

On AMX CPUs oneDNN's bf16 GEMM runs near ``torch.mm``'s rate, but what it does to an output
block after the products runs on the vector units while the tile unit waits: its fused erf GELU
made the FFN's first layer ~1.5x as long as the plain GEMM (DeiT-S, batch 8, 2 cores), and the
residual add is a pass of its own over the output. ``csrc/amx_linear.cpp`` computes ``x W^T +
b`` in 32 x 32 output blocks and finishes each block (the bias; the GELU, or the shortcut
added; the rounding to bf16) while the tile unit computes the next one:

* ``linear(x)`` rounded to bf16 (the qkv projection, its q rows scaled by ``scale_rows``);
* ``gelu(linear(x))`` (erf GELU, Eigen's rational erf: as close to the exact GELU as oneDNN's
  fused one; rounded once to bf16);
* ``shortcut + linear(x)`` with the branch rounded to bf16 first and the sum in the shortcut's
  dtype, into the shortcut if asked: what autocast's ``x + branch`` computes (the output
  projection and the FFN's second layer).

The products are oneDNN's (fp32 accumulation of bf16 products, k in steps of 32): the same bits
at DeiT's shapes but in about 1 of 10^4 outputs for 1536 input channels (oneDNN's order of the
sums). At DeiT-S's shapes (batch 8) the four linears of a layer take 0.81x oneDNN's time (its
GELU and a separate add), 0.60x at batch 1; DeiT-B's 0.83x (its weights, up to 4.7 MB, taken in
panels that stay in L2 with a chunk of x's rows; docs/benchmarks.md).

Where it runs: bf16 inputs (a bf16 model, or bf16 autocast: the weight and bias rounded to bf16
as autocast does, kept packed by the parameter, ``kept_copies.py``), contiguous, input and
output channels multiples of 32, no autograd, AMX CPUs with the switches :data:`USE_AMX_LINEAR`
and ``cpu_kernels.USE_CPU_KERNELS`` on; elsewhere oneDNN's linear runs (``onednn_linear.py``
chooses, under ``torch.compile`` too: inside its op).
"""

from typing import Optional, Tuple

import torch

from . import amx_attention, cpu_kernels, kept_copies

#: This CPU has the tile unit (``amx_attention.AMX_SUPPORTED``).
AMX_SUPPORTED = amx_attention.AMX_SUPPORTED
#: :func:`linear` replaces oneDNN's bf16 linear where it applies; read at every call: set to
#: False for oneDNN's.
USE_AMX_LINEAR = AMX_SUPPORTED

#: The weights packed for the kernel (in bf16), by parameter; with rows scaled (``scale_rows``).
_PACKED = kept_copies.new_store()
_PACKED_SCALED = kept_copies.new_store()
#: The biases rounded to bf16 and held in fp32 (the kernel adds them in fp32), by parameter.
_BIASES = kept_copies.new_store()
_BIASES_SCALED = kept_copies.new_store()


def applies(x: torch.Tensor, weight: torch.Tensor, gelu: Optional[str] = None) -> bool:
    """Whether :func:`linear` applies: a contiguous bf16 ``x`` (..., C_in) on the CPU without
    autograd, a 2-D ``weight`` (C_out, C_in) with both multiples of 32, ``gelu`` None or 'none'
    (the erf GELU), the switches on and the tile unit ready (the first call builds the kernels).
    """
    return (
        USE_AMX_LINEAR
        and AMX_SUPPORTED
        and cpu_kernels._on_cpu_no_grad(x, weight)
        and x.dtype == torch.bfloat16
        and x.dim() >= 1
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and weight.shape[0] % 32 == 0
        and weight.shape[1] % 32 == 0
        and gelu in (None, 'none')
        and x.is_contiguous()
        and amx_attention.tile_unit_ready()
    )


def shortcut_applies(shortcut: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` can add ``shortcut`` (contiguous, fp32 or bf16, the output's shape)
    to ``linear(x)``; meaningful where :func:`applies` holds."""
    return (
        shortcut.dtype in (torch.float32, torch.bfloat16)
        and shortcut.device.type == 'cpu'
        and shortcut.is_contiguous()
        and shortcut.shape == (*x.shape[:-1], weight.shape[0])
    )


def _pack(weight: torch.Tensor, scale_rows: Optional[Tuple[int, float]]) -> torch.Tensor:
    if scale_rows is None:
        w = weight.detach().to(torch.bfloat16)
    else:
        w = kept_copies.scale_rows(weight, torch.bfloat16, scale_rows)
    return cpu_kernels.kernels().amx_pack_weight(w.reshape(w.shape[0], -1).contiguous())


def packed_weight(
    weight: torch.Tensor, scale_rows: Optional[Tuple[int, float]] = None
) -> torch.Tensor:
    """``weight`` (C_out, C_in) in bf16 (its first rows scaled for ``scale_rows``, as
    ``onednn_linear.scaled_copy``), in the kernel's layout; kept by the parameter. A
    convolution's weight (C_out, C, kh, kw) is taken as (C_out, C*kh*kw)."""
    store, tag = (_PACKED, None) if scale_rows is None else (_PACKED_SCALED, scale_rows)
    return kept_copies.kept(store, weight, tag, lambda w: _pack(w, scale_rows))


def _bias(bias: torch.Tensor, scale_rows: Optional[Tuple[int, float]]) -> torch.Tensor:
    if scale_rows is None:
        return bias.detach().to(torch.bfloat16).float()
    return kept_copies.scale_rows(bias, torch.bfloat16, scale_rows).float()


def fp32_bias(
    bias: Optional[torch.Tensor], scale_rows: Optional[Tuple[int, float]] = None
) -> Optional[torch.Tensor]:
    """``bias`` rounded to bf16 (rows scaled for ``scale_rows``), in fp32; kept by the
    parameter. None stays None."""
    if bias is None:
        return None
    store, tag = (_BIASES, None) if scale_rows is None else (_BIASES_SCALED, scale_rows)
    return kept_copies.kept(store, bias, tag, lambda b: _bias(b, scale_rows))


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    gelu: Optional[str] = None,
    scale_rows: Optional[Tuple[int, float]] = None,
    shortcut: Optional[torch.Tensor] = None,
    inplace: bool = False,
) -> torch.Tensor:
    """``linear(x)`` on the tile unit, (..., C_in) -> (..., C_out); where :func:`applies` holds.

    Args:
        x: The bf16 input (..., C_in).
        weight: The layer's weight (C_out, C_in), fp32 or bf16 (rounded to bf16, packed and
            kept: :func:`packed_weight`); or a convolution's, as (C_out, C_in) (``patch_gemm``).
        bias: The layer's bias (C_out) or None (rounded to bf16: :func:`fp32_bias`).
        gelu: 'none' for the erf GELU of the output, None for none. Defaults to None.
        scale_rows: ``(n, s)``: the first ``n`` output channels multiplied by ``s``, from kept
            copies of the weight and bias with those rows scaled (``onednn_linear``'s).
            Defaults to None.
        shortcut: Returned plus the output rounded to bf16, in its dtype; where
            :func:`shortcut_applies` holds. Not with ``gelu``. Defaults to None (a bf16
            output).
        inplace: Write the sum into ``shortcut``'s memory. Defaults to False.
    """
    return cpu_kernels.kernels().amx_linear_bf16(
        x,
        packed_weight(weight, scale_rows),
        fp32_bias(bias, scale_rows),
        gelu is not None,
        shortcut,
        inplace,
    )
