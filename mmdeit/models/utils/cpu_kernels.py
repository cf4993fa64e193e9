"""Four small C++ kernels for bf16 autocast inference on CPUs with AVX-512 BF16 (AMX too).

With the GEMMs on the tile unit, what is left around them sets the pace of a bf16 forward:
measured on an AMX host (DeiT-S, batch 8, docs/benchmarks.md) the softmax took ~15 % of it,
the LayerNorms with their casts to bf16 ~8 %, the residual adds ~4 %. ATen has no kernel for
the forms the fast path needs: its bf16 softmax runs at 2x an exp pass, LayerNorm cannot write
bf16 from fp32 input (a second pass casts it), and adding a bf16 branch into the fp32 shortcut
first copies the branch to fp32. The kernels of ``csrc/cpu_kernels.cpp`` do each in one pass
over rows held in registers (4 rows at once: their reductions overlap), in fp32, rounding to
bf16 once, as the ops they replace:

* :func:`softmax_` over the attention scores' rows, in place (``exp_u20``, ATen's fast exp of
  its CPU flash attention: the same bf16 result but in about 1 of 10^5 elements, one bf16 unit);
* :func:`layer_norm_bf16`: the pre-norm written in bf16, the dtype the linear after it computes
  in under autocast (the fp32 values rounded once; 1 bf16 unit apart from ATen's in about
  2 of 10^5 elements: the sums' order);
* :func:`add_bf16`: ``shortcut (fp32) + branch (bf16)``, the same bits as ATen's add;
* :func:`split_heads`: q, k and v of the qkv GEMM's output in the heads' contiguous layout, one
  pass instead of the attention's three strided copies (the same bits).

The same build holds the attention on AMX's tile unit (``csrc/amx_attention.cpp``, used through
``amx_attention.py``) and in ``vdpbf16ps`` register blocks on CPUs without AMX
(``csrc/bf16_attention.cpp``, ``bf16_attention.py``); where either runs, the split and the
softmax here are not needed. Built once per machine and install with PyTorch's C++ extension
builder (``torch.utils.cpp_extension``, ninja and a C++ compiler, as ``torch.compile`` on the
CPU needs; ~45 s on 2 cores, then loaded from PyTorch's extension cache, a folder per install:
``kernel_build.py``), at the first call that can use them, never at import. Where the build
fails the ATen ops run (one warning). :data:`USE_CPU_KERNELS` is the switch; it is off on CPUs
without AVX-512 BF16 and where the environment variable ``MMDEIT_CPU_KERNELS=0`` is set.
Inference only (no autograd). Under ``torch.compile`` the pre-norm, the add and the split are
ops of the graph (``torch.ops.mmdeit.*``) and the softmax runs inside
``mmdeit::gemm_attention``; none in inductor's frozen graph on AMX CPUs, where the reference's
ops are traced (``cpu_ops.plain_ops_traced``). In the model: 1.18x faster with them (DeiT-S,
bf16 autocast, batch 8, 2 cores with AMX; issue 26's benchmark, ``--ablate cpu-kernels``).
"""

import hashlib
import logging
import math
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from . import kernel_build
from .cpu_ops import autocast_bf16, cpu_supports, define_cpu_op, plain_ops_traced

_CSRC = Path(__file__).with_name('csrc')
_SOURCES = [
    _CSRC / name
    for name in (
        'bindings.cpp',
        'cpu_kernels.cpp',
        'layer_norm_grad.cpp',
        'drop_add.cpp',
        'amx_attention.cpp',
        'amx_attention_grad.cpp',
        'bf16_attention.cpp',
        'fp32_attention.cpp',
        'amx_linear.cpp',
        'amx_weight_grad.cpp',
    )
]
_HEADERS = [_CSRC / 'cpu_kernels.h', _CSRC / 'amx_tiles.h']
_FLAGS = [
    '-O3',
    '-mavx512f',
    '-mavx512bw',
    '-mavx512vl',
    '-mavx512dq',
    '-mavx512bf16',
    '-mfma',
    '-fopenmp',  # at::parallel_for over PyTorch's OpenMP threads (its libgomp, loaded already)
    '-DCPU_CAPABILITY=AVX512',  # at::vec's AVX-512 types (exp_u20)
    '-DCPU_CAPABILITY_AVX512',
]


#: This CPU can run the kernels (checked once, at import); they are never built or run elsewhere.
SUPPORTED = cpu_supports('avx512_bf16')
#: The kernels replace the ATen ops where they apply: on CPUs with AVX-512 BF16 unless the
#: environment sets ``MMDEIT_CPU_KERNELS=0``; chosen once, at import. Read at every call: set
#: to False for ATen's ops (the same function).
USE_CPU_KERNELS = SUPPORTED and os.environ.get('MMDEIT_CPU_KERNELS', '1') != '0'

#: The longest row (softmax) or channel count (LayerNorm) the kernels take: ``kMaxRow`` of
#: ``csrc/cpu_kernels.h`` (a row is held in registers and stack); longer ones take ATen's ops.
MAX_ROW = 1024

_lock = threading.Lock()
_built: Optional[ModuleType] = None
_failed = False


def kernels() -> Optional[ModuleType]:
    """The compiled kernels, built on the first call (then taken from PyTorch's extension
    cache); None where the build failed (logged once) or :data:`USE_CPU_KERNELS` is off."""
    global _built, _failed
    if not (USE_CPU_KERNELS and SUPPORTED) or _failed:
        return None
    if _built is not None:
        return _built
    with _lock:
        if _built is None and not _failed:
            from torch.utils.cpp_extension import load

            print_log(
                'mmdeit: loading its CPU kernels (built the first time on a machine and install: '
                '~45 s on 2 cores)',
                logger='current',
            )
            try:
                build_dir = kernel_build.build_directory(_CSRC)  # this install's folder
                kernel_build.remove_stale_lock(build_dir)
                kernel_build.remove_gone_installs(build_dir)
                # the headers' hash among the flags: a changed header is a new build
                header = hashlib.sha1(b''.join(h.read_bytes() for h in _HEADERS)).hexdigest()[:12]
                _built = load(
                    name='mmdeit_cpu_kernels',
                    sources=[str(source) for source in _SOURCES],
                    extra_cflags=_FLAGS + [f'-DMMDEIT_KERNELS_HEADER={header}'],
                    extra_ldflags=['-fopenmp'],
                    build_directory=str(build_dir),
                )
            except Exception as e:  # no compiler or ninja, a failed build: ATen's ops run
                _failed = True
                reason = str(e).splitlines()[0] if str(e) else ''
                print_log(
                    f'mmdeit: its CPU kernels could not be built ({type(e).__name__}: '
                    f'{reason}); ATen ops run instead (MMDEIT_CPU_KERNELS=0 skips the attempt)',
                    logger='current',
                    level=logging.WARNING,
                )
    return _built


@torch.compiler.assume_constant_result
def _built_when_traced() -> bool:
    """Whether the kernels are built, a constant of a ``torch.compile`` graph (asked once, at
    tracing: the build is not traced)."""
    return kernels() is not None


def _available() -> bool:
    """Whether the kernels are built (the first call builds them)."""
    return _built_when_traced() if torch.compiler.is_compiling() else kernels() is not None


def _on_cpu(*tensors: torch.Tensor) -> bool:
    """The switch is on, CPU tensors, and not inductor's frozen AMX graph (``plain_ops_traced``:
    there the reference's ops are traced)."""
    return (
        USE_CPU_KERNELS
        and all(t.device.type == 'cpu' for t in tensors)
        and not plain_ops_traced(tensors[0])
    )


def _on_cpu_no_grad(*tensors: torch.Tensor) -> bool:
    """The common condition: :func:`_on_cpu` and no autograd."""
    return not torch.is_grad_enabled() and _on_cpu(*tensors)


def attention_fits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, head_dims: int) -> bool:
    """Whether an attention kernel takes these shapes (``amx_attention``, ``fp32_attention``):
    q (B, h, n, d) and k, v (B, h, N, d), d = ``head_dims``, n > 0, 1 to :data:`MAX_ROW` keys,
    each with its last dim contiguous."""
    return (
        q.dim() == 4
        and k.shape == v.shape
        and q.shape[:2] == k.shape[:2]
        and q.shape[-1] == k.shape[-1] == head_dims
        and q.shape[2] > 0
        and 0 < k.shape[2] <= MAX_ROW
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
    )


def bf16_attention_fits(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, head_dims: int
) -> bool:
    """Whether a bf16 attention kernel (``amx_attention``, ``bf16_attention``) takes these
    inputs: bf16 q, k and v of the shapes :func:`attention_fits` takes, and ``scale`` a power of
    two (then the kernels' scaling of the bf16 scores is exact, as the GEMM attention's)."""
    return (
        q.dtype == k.dtype == v.dtype == torch.bfloat16
        and attention_fits(q, k, v, head_dims)
        and math.frexp(scale)[0] == 0.5  # a positive power of two
    )


def softmax_applies(rows: torch.Tensor) -> bool:
    """Whether :func:`softmax_` applies to ``rows``: a contiguous 2-D bf16 CPU tensor of rows of
    up to :data:`MAX_ROW` elements, without autograd, and the kernels are built (the first call
    builds)."""
    return (
        _on_cpu_no_grad(rows)
        and not torch.compiler.is_compiling()  # compiled, it runs inside mmdeit::gemm_attention
        and rows.dtype == torch.bfloat16
        and rows.dim() == 2
        and 0 < rows.shape[1] <= MAX_ROW
        and rows.is_contiguous()
        and kernels() is not None
    )


def softmax_(rows: torch.Tensor) -> torch.Tensor:
    """``softmax(rows, dim=-1)`` written into ``rows`` (R, N), computed in fp32; where
    :func:`softmax_applies` holds. Returns ``rows``."""
    kernels().softmax_bf16_(rows)
    return rows


def layer_norm_applies(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether :func:`layer_norm_bf16` applies: no autograd and :func:`layer_norm_fits`."""
    return _on_cpu_no_grad(x) and layer_norm_fits(x, norm)


def layer_norm_fits(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether the bf16 LayerNorm kernel takes ``norm(x)``: bf16 CPU autocast, a contiguous fp32
    ``x`` (..., C) with C up to :data:`MAX_ROW`, ``norm`` an ``nn.LayerNorm`` over the last dim
    with fp32 weight and bias, and the kernels are built (inference's :func:`layer_norm_applies`
    and training's ``layer_norm_grad.applies``)."""
    return (
        type(norm) is nn.LayerNorm
        and autocast_bf16()
        and x.dtype == torch.float32
        and x.is_contiguous()
        and norm.normalized_shape == (x.shape[-1],)
        and 0 < x.shape[-1] <= MAX_ROW
        and norm.weight is not None
        and norm.bias is not None
        and norm.weight.dtype == torch.float32
        and norm.bias.dtype == torch.float32
        and _available()
    )


def layer_norm_bf16(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(x).to(torch.bfloat16)`` in one pass: (..., C) fp32 -> (..., C) bf16; where
    :func:`layer_norm_applies` holds."""
    if torch.compiler.is_compiling():
        return torch.ops.mmdeit.layer_norm_bf16(x, norm.weight, norm.bias, norm.eps)
    return kernels().layer_norm_bf16(x, norm.weight, norm.bias, norm.eps)


def add_applies(identity: torch.Tensor, branch: torch.Tensor) -> bool:
    """Whether :func:`add_bf16` applies: a contiguous fp32 ``identity`` and bf16 ``branch`` of
    one shape on the CPU, without autograd, and the kernels are built."""
    return (
        _on_cpu_no_grad(identity, branch)
        and identity.dtype == torch.float32
        and branch.dtype == torch.bfloat16
        and identity.shape == branch.shape
        and identity.is_contiguous()
        and branch.is_contiguous()
        and _available()
    )


def add_bf16(identity: torch.Tensor, branch: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``identity + branch`` in fp32 (fp32 + bf16), without a copy of the branch; into
    ``identity`` if ``inplace`` (default False: a new tensor); where :func:`add_applies`
    holds."""
    if torch.compiler.is_compiling():  # a graph's op: a new tensor
        return torch.ops.mmdeit.add_bf16(identity, branch)
    out = identity if inplace else torch.empty_like(identity)
    kernels().add_bf16_out(identity, branch, out)
    return out


def split_applies(t: torch.Tensor) -> bool:
    """Whether :func:`split_heads` applies: a contiguous 3-D bf16 CPU tensor, without autograd,
    and the kernels are built."""
    return (
        _on_cpu_no_grad(t)
        and t.dtype == torch.bfloat16
        and t.dim() == 3
        and t.is_contiguous()
        and _available()
    )


def split_heads(t: torch.Tensor, parts: int, heads: int) -> Tuple[torch.Tensor, ...]:
    """(B, N, parts*C) -> ``parts`` contiguous tensors (B, h, N, d), in one pass (the heads'
    views of ``MultiheadAttention._split_heads``, copied as the GEMM attention needs them:
    three strided copies otherwise); where :func:`split_applies` holds."""
    if torch.compiler.is_compiling():
        return torch.ops.mmdeit.split_heads_bf16(t, parts, heads).unbind(0)
    return kernels().split_heads_bf16(t, parts, heads).unbind(0)


def pre_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` for a linear layer that computes in bf16 under autocast: in bf16 by
    :func:`layer_norm_bf16` where :func:`layer_norm_applies` holds (the rounding the linear's
    autocast would do), else ``norm(x)``. (..., C) -> (..., C)."""
    return layer_norm_bf16(x, norm) if layer_norm_applies(x, norm) else norm(x)


def add(identity: torch.Tensor, branch: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``identity + branch`` (into ``identity`` if ``inplace``; default False): by
    :func:`add_bf16` where :func:`add_applies` holds, else ATen's add (the same bits)."""
    if add_applies(identity, branch):
        return add_bf16(identity, branch, inplace)
    return identity.add_(branch) if inplace else torch.add(identity, branch)


# The kernels as ops of a ``torch.compile`` graph (CPU inference in bf16: each is called where
# its ``*_applies`` held at tracing): a new tensor each, contiguous inputs; ATen's ops where the
# kernels are gone at run time (a graph loaded in another process).
def _layer_norm_op(x, weight, bias, eps):
    built = kernels()
    if built is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(torch.bfloat16)
    return built.layer_norm_bf16(x.contiguous(), weight, bias, eps)


def _add_op(x, y):
    built = kernels()
    if built is None:
        return torch.add(x, y)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    built.add_bf16_out(x.contiguous(), y.contiguous(), out)
    return out


def _split_heads_op(t, parts, heads):
    built = kernels()
    if built is None:
        B, N, width = t.shape
        t = t.reshape(B, N, parts, heads, width // (parts * heads))  # (B, N, parts, h, d)
        return t.permute(2, 0, 3, 1, 4).contiguous()  # (parts, B, h, N, d)
    return built.split_heads_bf16(t.contiguous(), parts, heads)


def _split_heads_fake(t, parts, heads):
    B, N, width = t.shape
    return t.new_empty((parts, B, heads, N, width // (parts * heads)))


define_cpu_op(
    'layer_norm_bf16(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor',
    _layer_norm_op,
    lambda x, weight, bias, eps: x.new_empty(x.shape, dtype=torch.bfloat16),
)
define_cpu_op(
    'add_bf16(Tensor x, Tensor y) -> Tensor',
    _add_op,
    lambda x, y: x.new_empty(x.shape),
)
define_cpu_op(
    'split_heads_bf16(Tensor t, int parts, int heads) -> Tensor', _split_heads_op, _split_heads_fake
)
