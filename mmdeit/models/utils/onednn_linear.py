"""Linear layers through oneDNN for fp32 CPU inference, with the activation fused in.

On the CPUs measured for ``docs/benchmarks.md`` oneDNN's fp32 GEMM is 6-12 % faster than the
BLAS behind :func:`torch.nn.functional.linear` for ViT shapes, and it applies an erf GELU to
its output block while the block is still in cache. PyTorch exposes it as
``torch.ops.mkldnn._linear_pointwise``, the op its own compiler (inductor) emits for CPU
inference. It has no backward, so it is used only where autograd is off; everywhere else, and
on a PyTorch built without oneDNN, the ordinary ops run. Both compute the same fp32 products
(erf GELU, no approximation); only the rounding order of the sums differs.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_HAS_OP = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')
_GELU = {'none': ('gelu', 'none'), 'tanh': ('gelu', 'tanh')}


def onednn_applies(x: torch.Tensor, linear: nn.Module) -> bool:
    """Whether :func:`onednn_linear` would take the oneDNN path for this input and layer."""
    return (
        _HAS_OP
        and not torch.is_grad_enabled()
        and type(linear) is nn.Linear
        and x.device.type == 'cpu'
        and x.dtype == torch.float32
        and linear.weight.dtype == torch.float32
        and not torch.is_autocast_enabled('cpu')
    )


def onednn_linear(
    x: torch.Tensor, linear: nn.Linear, gelu: Optional[str] = None, rows: slice = slice(None)
) -> torch.Tensor:
    """``linear(x)``, optionally followed by GELU, as one oneDNN call; (..., C_in) -> (..., C_out).

    Call it only where :func:`onednn_applies` holds.

    Args:
        x: The input (..., C_in); need not be contiguous.
        linear: The layer whose weight and bias are used.
        gelu: None for no activation, else nn.GELU's ``approximate`` ('none' is the erf GELU).
            Defaults to None.
        rows: Compute only these output channels (rows of the weight, as views). Defaults to
            all.
    """
    weight = linear.weight[rows]
    bias = None if linear.bias is None else linear.bias[rows]
    attr, algorithm = ('none', '') if gelu is None else _GELU[gelu]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


def linear_rows(x: torch.Tensor, linear: nn.Linear, rows: slice = slice(None)) -> torch.Tensor:
    """Output channels ``rows`` of ``linear(x)``, computing only those; oneDNN where it applies."""
    if onednn_applies(x, linear):
        return onednn_linear(x, linear, rows=rows)
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)
