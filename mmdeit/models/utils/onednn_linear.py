"""Linear layers through oneDNN for CPU inference (fp32 and bf16), with the activation fused in.

On the AVX-512 CPUs measured for ``docs/benchmarks.md`` (Intel, with and without AMX) oneDNN's
fp32 GEMM is 6-12 % faster than the BLAS behind :func:`torch.nn.functional.linear` for ViT
shapes, and it applies an erf GELU to its output block while the block is still in cache. On
a CPU whose best ATen kernels are AVX2 (an AVX2-only AMD EPYC, measured) it is the other way
round: oneDNN's fp32 GEMM ~10 % slower than MKL's, its fused erf GELU ~35 % slower than
``F.linear`` + ``F.gelu``, DeiT-S fp32 inference 1.26x faster without it; there fp32 takes the
ordinary ops (:data:`FP32_ONEDNN`, chosen once at import). PyTorch exposes it as
``torch.ops.mkldnn._linear_pointwise``, the op its own compiler (inductor) emits for CPU
inference. It has no backward, so it is used only where autograd is off; everywhere else, and
on a PyTorch built without oneDNN, the ordinary ops run. Both compute the same fp32 products
(erf GELU, no approximation); only the rounding order of the sums differs.

**bf16.** On a CPU whose oneDNN has bf16 kernels (AVX-512 BF16 or AMX; checked once) the same
op takes bf16 inputs and weights, in two cases:

* a model cast to bf16 (``model.bfloat16()``, bf16 input), without autocast: its weights are
  used as they are;
* under bf16 CPU autocast: the input is cast to bf16 as autocast would, and the weight and bias
  are the bf16 copies autocast would make, made once per weight and kept on the layer
  (:func:`bf16_params`) instead of once per autocast region (per call). A copy is made again
  when the weight changes (an in-place update bumps its version; ``.to()`` gives new storage)
  and after :func:`clear_bf16_params` (the fast encoder layer calls it on ``train()`` /
  ``eval()``, which catches a change through ``.data``, which keeps the version).

The output is bf16 in both cases, as autocast's ``linear`` gives; the products are the ones
autocast computes (bf16 inputs, fp32 accumulation), GELU fused.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_HAS_OP = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')
_GELU = {'none': ('gelu', 'none'), 'tanh': ('gelu', 'tanh')}
_CACHE_ATTR = '_mmdeit_bf16_params'


def _bf16_supported() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX-512 BF16 / AMX), else False."""
    if not _HAS_OP:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: oneDNN bf16 GEMMs are native on this CPU (checked once, at import).
BF16_SUPPORTED = _bf16_supported()
#: fp32 linears go through oneDNN on this CPU: where ATen's kernels are AVX-512 (checked once, at
#: import; on AVX2-only CPUs oneDNN's fp32 GEMM and fused GELU were measured slower than MKL's).
FP32_ONEDNN = _HAS_OP and torch.backends.cpu.get_cpu_capability() == 'AVX512'


def _autocast_bf16() -> bool:
    """Whether bf16 CPU autocast is on."""
    return torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16


def onednn_applies(x: torch.Tensor, linear: nn.Module) -> bool:
    """Whether :func:`onednn_linear` would take the oneDNN path for this input and layer.

    True without autograd, for an ``nn.Linear`` on the CPU, in fp32 (no autocast) when
    :data:`FP32_ONEDNN` or in bf16 (a bf16 model and input without autocast, or bf16 autocast
    of an fp32 or bf16 model) when :data:`BF16_SUPPORTED`; never while ``torch.compile``
    traces (the plain ops are traced).
    """
    if not _HAS_OP or torch.is_grad_enabled() or type(linear) is not nn.Linear:
        return False
    if torch.compiler.is_compiling():  # the compiler picks its own kernels (oneDNN included)
        return False
    if x.device.type != 'cpu':
        return False
    w_dtype, fp32, bf16 = linear.weight.dtype, torch.float32, torch.bfloat16
    if torch.is_autocast_enabled('cpu'):
        return BF16_SUPPORTED and _autocast_bf16() and {x.dtype, w_dtype} <= {fp32, bf16}
    if x.dtype == fp32 and w_dtype == fp32:
        return FP32_ONEDNN
    return BF16_SUPPORTED and x.dtype == bf16 and w_dtype == bf16


def bf16_params(linear: nn.Linear) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The layer's weight and bias in bf16: as they are if bf16, else cached bf16 copies.

    The copies live on the layer (a plain attribute, not in its ``state_dict``) and are made
    again when the weight's storage or version changes (an optimizer step, ``load_state_dict``
    and ``.to()`` all change one of them). They cost half the fp32 weights' memory.
    """
    weight, bias = linear.weight, linear.bias
    if weight.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16):
        return weight, bias
    key = tuple(
        (t.data_ptr(), t._version, t.dtype) if t is not None else None for t in (weight, bias)
    )
    cached = linear.__dict__.get(_CACHE_ATTR)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            copies = tuple(None if t is None else t.to(torch.bfloat16) for t in (weight, bias))
        cached = (key, copies)
        linear.__dict__[_CACHE_ATTR] = cached
    return cached[1]


def clear_bf16_params(module: nn.Module) -> None:
    """Drop the bf16 copies :func:`bf16_params` keeps, in ``module`` and its submodules."""
    for m in module.modules():
        m.__dict__.pop(_CACHE_ATTR, None)


def onednn_linear(
    x: torch.Tensor, linear: nn.Linear, gelu: Optional[str] = None, rows: slice = slice(None)
) -> torch.Tensor:
    """``linear(x)``, optionally followed by GELU, as one oneDNN call; (..., C_in) -> (..., C_out).

    Call it only where :func:`onednn_applies` holds. In fp32 it computes in fp32; in bf16
    (a bf16 model, or bf16 autocast) in bf16, returning bf16.

    Args:
        x: The input (..., C_in); need not be contiguous.
        linear: The layer whose weight and bias are used.
        gelu: None for no activation, else nn.GELU's ``approximate`` ('none' is the erf GELU).
            Defaults to None.
        rows: Compute only these output channels (rows of the weight, as views). Defaults to
            all.
    """
    if (
        x.dtype == torch.float32
        and linear.weight.dtype == torch.float32
        and not (torch.is_autocast_enabled('cpu'))
    ):
        weight, bias = linear.weight, linear.bias
    else:  # bf16: a bf16 model, or autocast
        weight, bias = bf16_params(linear)
        x = x.to(torch.bfloat16)
    weight = weight[rows]
    bias = None if bias is None else bias[rows]
    attr, algorithm = ('none', '') if gelu is None else _GELU[gelu]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


def linear_rows(x: torch.Tensor, linear: nn.Linear, rows: slice = slice(None)) -> torch.Tensor:
    """Output channels ``rows`` of ``linear(x)``, computing only those; oneDNN where it applies.

    While ``torch.compile`` traces, the whole layer is computed and its output sliced: inductor's
    CPU GEMM template (``mode='max-autotune'`` with ``freezing``; seen with torch 2.13) reads a
    weight view with a storage offset, such as ``weight[C:]``, at the wrong place and returns
    wrong numbers (tested). The extra columns cost little: this serves the last layer's q, k, v.
    """
    if torch.compiler.is_compiling():
        return F.linear(x, linear.weight, linear.bias)[..., rows]
    if onednn_applies(x, linear):
        return onednn_linear(x, linear, rows=rows)
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)
