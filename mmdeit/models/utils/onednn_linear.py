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
  are the bf16 copies autocast would make, made once per weight and kept (:func:`bf16_copy`,
  keyed by the parameter) instead of once per autocast region (per call). A copy is made again
  when the weight changes (an in-place update bumps its version; ``.to()`` gives new storage)
  and after :func:`clear_weight_copies` (the fast encoder layer calls it on ``train()`` /
  ``eval()``, which catches a change through ``.data``, which keeps the version).

The output is bf16 in both cases, as autocast's ``linear`` gives; the products are the ones
autocast computes (bf16 inputs, fp32 accumulation), GELU fused.

**Weights in oneDNN's own layout** (:data:`PREPACK`, on by default). Given a weight in
PyTorch's row-major layout, oneDNN reorders it into its blocked layout at every call. Here each
weight is reordered once (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's
``freezing`` does) and kept by the parameter like the bf16 copies (:func:`packed_weight`); the
outputs are bit for bit those of the row-major weight (the same kernel; tested). Measured on an
AVX-512 BF16 host (docs/benchmarks.md): 3-9 % off each GEMM, DeiT-S inference 3-5 % faster in
fp32 and in bf16. The cost is memory: a kept copy of every weight in the compute dtype (in fp32
inference a second copy of the weights; in bf16 it replaces the plain bf16 copy, which only the
weight slices of :func:`linear_rows` still use). ``PREPACK = False`` turns it off.

**Under ``torch.compile``** the layer is one opaque op of this package, ``torch.ops.mmdeit.
onednn_linear`` (``cpu_ops.define_cpu_op``): inductor compiles what lies between the
linears (layer norms, casts, residual adds, attention) and calls this op for each linear, with
the same kept bf16 weight copies (``scale_rows`` too: its last two arguments). Traced as plain
ops instead, the compiled model ran slower than the eager one (docs/benchmarks.md): under
autocast every call cast every weight again, and without ``freezing`` inductor calls the BLAS
GEMM without the fused GELU.

**On AMX CPUs the tile unit's kernel takes the bf16 linears** where ``amx_linear.applies``
holds (mmdeit's C++ kernels built): :func:`onednn_linear` and the compiled op call it instead
of oneDNN, and :func:`linear_add` adds the shortcut in its epilogue (``amx_linear.py``).
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import amx_linear, cpu_kernels, kept_copies
from .cpu_ops import autocast_bf16, define_cpu_op, plain_ops_traced
from .kept_copies import kept, new_store

_HAS_OP = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_linear_pointwise')
_GELU = {'none': ('gelu', 'none'), 'tanh': ('gelu', 'tanh')}
#: The bf16 copies of fp32 parameters, by parameter: ``{param: (key, copy)}``.
_COPIES = new_store()
#: The weights in oneDNN's blocked layout, by parameter: ``{param: (key, packed)}``.
_PACKED = new_store()
#: The copies with their first rows scaled (``scale_rows``), row-major and packed, by parameter.
_SCALED = new_store()
_PACKED_SCALED = new_store()
#: Linear weights go to oneDNN in its blocked layout, reordered once and kept
#: (:func:`packed_weight`) instead of at every call; set to False to keep no such copies.
PREPACK = _HAS_OP and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')


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


def onednn_applies(x: torch.Tensor, linear: nn.Module) -> bool:
    """Whether :func:`onednn_linear` would take the oneDNN path for this input and layer.

    True without autograd, for an ``nn.Linear`` on the CPU, in fp32 (no autocast) when
    :data:`FP32_ONEDNN` or in bf16 (a bf16 model and input without autocast, or bf16 autocast
    of an fp32 or bf16 model) when :data:`BF16_SUPPORTED`; also while ``torch.compile``
    traces (then :func:`onednn_linear` is one opaque op of the graph), except where
    :func:`~.cpu_ops.plain_ops_traced` holds (inductor's ``freezing`` on an AMX CPU).
    """
    if not _HAS_OP or torch.is_grad_enabled() or type(linear) is not nn.Linear:
        return False
    if plain_ops_traced(x):  # inductor packs frozen weights itself (cpu_ops.py)
        return False
    if x.device.type != 'cpu':
        return False
    w_dtype, fp32, bf16 = linear.weight.dtype, torch.float32, torch.bfloat16
    if torch.is_autocast_enabled('cpu'):
        return BF16_SUPPORTED and autocast_bf16() and {x.dtype, w_dtype} <= {fp32, bf16}
    if x.dtype == fp32 and w_dtype == fp32:
        return FP32_ONEDNN
    return BF16_SUPPORTED and x.dtype == bf16 and w_dtype == bf16


def computes_in_bf16(x: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether :func:`onednn_linear` computes ``linear(x)`` in bf16 (a bf16 model, or autocast)
    rather than fp32; meaningful where :func:`onednn_applies` holds."""
    fp32 = x.dtype == torch.float32 and linear.weight.dtype == torch.float32
    return not fp32 or torch.is_autocast_enabled('cpu')


def bf16_copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` in bf16: ``t`` itself if bf16 (or None), else its kept bf16 copy.

    The copy is kept while the tensor (a parameter) lives, in a dict weakly keyed by it, not in
    any ``state_dict``, and made again when the tensor's storage or version changes (an
    optimizer step, ``load_state_dict`` and ``.to()`` all change one of them). The copies cost
    half the fp32 weights' memory.
    """
    if t is None or t.dtype == torch.bfloat16:
        return t
    return kept(_COPIES, t, torch.bfloat16, lambda w: w.to(torch.bfloat16))


def packed_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A linear layer's ``weight`` (C_out, C_in) in ``dtype`` (fp32 or bf16) and oneDNN's blocked
    layout, for :func:`_linear_pointwise`: kept by the parameter as :func:`bf16_copy` keeps its
    copies (remade when it changes; not in any ``state_dict``)."""
    return kept(
        _PACKED, weight, dtype, lambda w: torch.ops.mkldnn._reorder_linear_weight(w.to(dtype))
    )


def scaled_copy(
    t: Optional[torch.Tensor], dtype: torch.dtype, scale_rows: Tuple[int, float]
) -> Optional[torch.Tensor]:
    """``kept_copies.scale_rows`` of a parameter (None stays None), row-major, kept by it as
    :func:`bf16_copy` keeps its copies."""
    if t is None:
        return None

    def make(w: torch.Tensor) -> torch.Tensor:
        return kept_copies.scale_rows(w, dtype, scale_rows)

    return kept(_SCALED, t, (dtype, *scale_rows), make)


def packed_scaled_weight(
    weight: torch.Tensor, dtype: torch.dtype, scale_rows: Tuple[int, float]
) -> torch.Tensor:
    """``kept_copies.scale_rows`` of a weight in oneDNN's blocked layout, kept by the parameter."""
    return kept(
        _PACKED_SCALED,
        weight,
        (dtype, *scale_rows),
        lambda w: torch.ops.mkldnn._reorder_linear_weight(
            kept_copies.scale_rows(w, dtype, scale_rows)
        ),
    )


def bf16_params(linear: nn.Linear) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The layer's weight and bias in bf16 (:func:`bf16_copy`)."""
    return bf16_copy(linear.weight), bf16_copy(linear.bias)


def clear_weight_copies(module: nn.Module) -> None:
    """Drop the copies kept of ``module``'s parameters: :func:`bf16_copy`, :func:`packed_weight`,
    :func:`scaled_copy`, :func:`packed_scaled_weight` and ``amx_linear``'s packed weights."""
    kept_copies.clear(module)


def _linear_pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], gelu: Optional[str]
) -> torch.Tensor:
    """oneDNN's ``linear(x)`` with GELU (nn.GELU's ``approximate``) or None fused in; the
    weight and bias in ``x``'s dtype."""
    attr, algorithm = ('none', '') if gelu is None else _GELU[gelu]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


def _onednn_linear_kernel(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    gelu: Optional[str],
    scale_n: int = 0,
    scale: float = 1.0,
) -> torch.Tensor:
    """The op ``mmdeit::onednn_linear``: :func:`_linear_pointwise` as one op of a compiled
    graph, (..., C_in) -> (..., C_out); a bf16 ``x`` takes the parameters' kept bf16 copies,
    packed where :data:`PREPACK`; with ``scale_n`` > 0, :func:`onednn_linear`'s
    ``scale_rows=(scale_n, scale)``."""
    scale_rows = (scale_n, scale) if scale_n else None
    if amx_linear.applies(x, weight, gelu):  # the tile unit's kernel (AMX CPUs, bf16)
        return amx_linear.linear(x, weight, bias, gelu, scale_rows)
    if scale_rows:
        return _scaled_linear(x, weight, bias, gelu, scale_rows)
    return _linear_pointwise(x, *_whole_weight(weight, bias, x.dtype), gelu)


def _onednn_linear_fake(x, weight, bias, gelu, scale_n=0, scale=1.0):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


if _HAS_OP:
    define_cpu_op(
        'onednn_linear(Tensor x, Tensor weight, Tensor? bias, str? gelu, int scale_n=0, '
        'float scale=1.0) -> Tensor',
        _onednn_linear_kernel,
        _onednn_linear_fake,
    )


def _whole_weight(
    weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """A layer's weight and bias as :func:`_linear_pointwise` takes them for an input of
    ``dtype``: the kept bf16 copies for bf16, the weight packed where :data:`PREPACK`."""
    if dtype == torch.bfloat16:
        bias = bf16_copy(bias)
        if not PREPACK:
            weight = bf16_copy(weight)
    return (packed_weight(weight, dtype) if PREPACK else weight), bias


def onednn_linear(
    x: torch.Tensor,
    linear: nn.Linear,
    gelu: Optional[str] = None,
    rows: slice = slice(None),
    scale_rows: Optional[Tuple[int, float]] = None,
) -> torch.Tensor:
    """``linear(x)``, optionally followed by GELU, as one oneDNN call; (..., C_in) -> (..., C_out).

    Call it only where :func:`onednn_applies` holds. In fp32 it computes in fp32; in bf16
    (a bf16 model, or bf16 autocast) in bf16, returning bf16. While ``torch.compile`` traces,
    it is the op ``torch.ops.mmdeit.onednn_linear`` of the whole layer, its output sliced.

    Args:
        x: The input (..., C_in); need not be contiguous.
        linear: The layer whose weight and bias are used.
        gelu: None for no activation, else nn.GELU's ``approximate`` ('none' is the erf GELU).
            Defaults to None.
        rows: Compute only these output channels (rows of the weight, as views). Defaults to
            all.
        scale_rows: ``(n, s)``: the first ``n`` output channels come out multiplied by ``s``,
            computed with kept copies of the weight and bias whose rows are scaled
            (:func:`scaled_copy`, :func:`packed_scaled_weight`); for a power of two ``s`` the
            outputs are exactly the unscaled ones times ``s``. Defaults to None (no
            scaling).
    """
    if computes_in_bf16(x, linear):  # a bf16 model, or autocast
        x = x.to(torch.bfloat16)
    weight, bias = linear.weight, linear.bias
    if torch.compiler.is_compiling():  # the parameters themselves: their copies are kept
        scale_n, scale = scale_rows or (0, 1.0)
        out = torch.ops.mmdeit.onednn_linear(x, weight, bias, gelu, scale_n, scale)
        return out if rows == slice(None) else out[..., rows]
    if rows == slice(None) and amx_linear.applies(x, weight, gelu):  # AMX CPUs, bf16
        return amx_linear.linear(x, weight, bias, gelu, scale_rows)
    if scale_rows is not None:  # kept copies with the rows scaled
        if rows == slice(None):
            return _scaled_linear(x, weight, bias, gelu, scale_rows)
        bias = scaled_copy(bias, x.dtype, scale_rows)
        weight = scaled_copy(weight, x.dtype, scale_rows)
        return _linear_pointwise(x, weight[rows], None if bias is None else bias[rows], gelu)
    if rows == slice(None):
        return _linear_pointwise(x, *_whole_weight(weight, bias, x.dtype), gelu)
    if x.dtype == torch.bfloat16:  # the whole weight's copy, then the rows (views)
        weight, bias = bf16_params(linear)
    bias = None if bias is None else bias[rows]
    return _linear_pointwise(x, weight[rows], bias, gelu)


def linear_add(
    identity: torch.Tensor, x: torch.Tensor, linear: nn.Linear, inplace: bool = False
) -> torch.Tensor:
    """``identity + linear(x)`` where :func:`onednn_applies` holds, (..., C_out): on the tile unit
    with the sum in the GEMM's epilogue where ``amx_linear`` applies, else :func:`onednn_linear`
    and an add. Under autocast the bf16 branch is added into the fp32 shortcut (in its dtype, as
    autocast's ``x + branch``; into ``identity``'s memory if ``inplace``, default False)."""
    if computes_in_bf16(x, linear):
        x = x.to(torch.bfloat16)
    weight = linear.weight
    if (
        not torch.compiler.is_compiling()
        and amx_linear.applies(x, weight)
        and amx_linear.shortcut_applies(identity, x, weight)
    ):
        return amx_linear.linear(x, weight, linear.bias, shortcut=identity, inplace=inplace)
    out = onednn_linear(x, linear)  # a new tensor
    if out.dtype == identity.dtype:
        return out.add_(identity)  # summed in place
    return cpu_kernels.add(identity, out, inplace)  # bf16 branch, fp32 stream


def _scaled_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    gelu: Optional[str],
    scale_rows: Tuple[int, float],
) -> torch.Tensor:
    """The whole layer with its first rows scaled (:func:`onednn_linear`'s ``scale_rows``),
    from the kept scaled copies: packed where :data:`PREPACK`, else row-major."""
    dtype = x.dtype
    if PREPACK:
        weight = packed_scaled_weight(weight, dtype, scale_rows)
    else:
        weight = scaled_copy(weight, dtype, scale_rows)
    return _linear_pointwise(x, weight, scaled_copy(bias, dtype, scale_rows), gelu)


def linear_rows(
    x: torch.Tensor,
    linear: nn.Linear,
    rows: slice = slice(None),
    scale_rows: Optional[Tuple[int, float]] = None,
) -> torch.Tensor:
    """Output channels ``rows`` of ``linear(x)``, computing only those; oneDNN where it applies
    (``scale_rows``: :func:`onednn_linear`'s, only there).

    While ``torch.compile`` traces, the whole layer is computed and its output sliced: inductor's
    CPU GEMM template (``mode='max-autotune'`` with ``freezing``; seen with torch 2.13) reads a
    weight view with a storage offset, such as ``weight[C:]``, at the wrong place and returns
    wrong numbers (tested). The extra columns cost little: this serves the last layer's q, k, v.
    """
    if onednn_applies(x, linear):
        return onednn_linear(x, linear, rows=rows, scale_rows=scale_rows)
    if scale_rows is not None:
        raise ValueError('linear_rows: scale_rows only where onednn_applies holds')
    if torch.compiler.is_compiling():
        return F.linear(x, linear.weight, linear.bias)[..., rows]
    bias = None if linear.bias is None else linear.bias[rows]
    return F.linear(x, linear.weight[rows], bias)
