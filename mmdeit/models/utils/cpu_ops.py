"""mmdeit's own ops for compiled graphs (``torch.ops.mmdeit.*``): a CPU kernel and a fake.

The fast path's oneDNN linear and bf16 GEMM attention are single opaque ops of a
``torch.compile`` graph (``onednn_linear.py``, ``gemm_attention.py``). They are defined with
``torch.library.Library`` and a kernel for the CPU dispatch key only, not with
``torch.library.custom_op``: the latter's Python wrapping cost ~15 µs a call (35.8 against 20.7
µs for a tiny linear, measured on an AVX-512 host), this form ~4 (24.7); compiled DeiT-S in
bf16 at batch 8 took 188-197 against 202 ms (docs/benchmarks.md). Both ops have no backward;
they are called only without autograd.

**Where inductor freezes the weights they step aside on AMX CPUs** (:data:`PLAIN_OPS_WHEN_FROZEN`,
:func:`plain_ops_traced`). With ``torch._inductor.config.freezing`` on, inductor folds the
weights in as constants, packs them for oneDNN itself and, under ``mode='max-autotune'``, picks
among its own GEMM kernels (AMX micro-kernels with the bias, GELU and residual add fused in);
these ops are opaque to it. Measured on an AMX host (DeiT-S, bf16 autocast, batch 8,
docs/benchmarks.md), the compiled model with freezing took 0.95x the time with the plain ops
(default mode) and 0.85-0.93x with ``max-autotune`` (fp32: 0.93x); without freezing the ops are
faster (plain: 1.25x the time), so there they stay. Not measured on a CPU without AMX, where
the ops stay. Chosen once at import; set it to False to keep the ops under freezing too.

**Except in bf16 where mmdeit's tile-unit kernels run** (:func:`_tile_kernels_run`: the C++
kernels built, the tile unit granted, ``amx_attention`` and ``amx_linear`` on): with them the
frozen graph with the ops ran at eager's speed (1.00x, max-autotune), the plain one at 1.25x its
time (DeiT-S, batch 8, docs/benchmarks.md, seventh session); fp32 has no such kernels.
"""

from typing import Callable

import torch
from torch._inductor import config as inductor_config

_LIB = torch.library.Library('mmdeit', 'FRAGMENT')  # kept alive with the module


def cpu_supports(feature: str) -> bool:
    """Whether torch reports the CPU feature ``feature`` (``torch.cpu._is_<feature>_supported``,
    e.g. 'amx_tile', 'avx512_bf16'); False where torch cannot tell."""
    try:
        return bool(getattr(torch.cpu, f'_is_{feature}_supported')())
    except (AttributeError, RuntimeError):
        return False


#: The fast path's ops give way to the plain ones while inductor traces with ``freezing`` on
#: (see the module's docstring): True on CPUs with AMX, checked once at import.
PLAIN_OPS_WHEN_FROZEN = cpu_supports('amx_tile')


@torch.compiler.assume_constant_result
def _freezing() -> bool:
    """Inductor's ``freezing`` setting, a constant of the traced graph: no guard on it, so a
    graph traced inside ``inductor_config.patch(freezing=True)`` is not traced again when
    called after the block (its weights stay frozen; a guard made dynamo trace it again, as
    a graph with the ops and without freezing)."""
    return bool(inductor_config.freezing)


@torch.compiler.assume_constant_result
def _tile_kernels_run() -> bool:
    """Whether mmdeit's tile-unit kernels run in bf16 inference here (a constant of the traced
    graph): the C++ kernels on and built, the tile unit granted, its attention and linears on."""
    from . import amx_attention, amx_linear, cpu_kernels  # they import this module

    return bool(
        cpu_kernels.USE_CPU_KERNELS
        and amx_attention.USE_AMX_ATTENTION
        and amx_linear.USE_AMX_LINEAR
        and amx_attention.tile_unit_ready()
    )


def autocast_bf16() -> bool:
    """Whether bf16 CPU autocast is on."""
    return torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16


def _in_bf16(x: torch.Tensor) -> bool:
    """Whether the fast path computes in bf16: a bf16 ``x`` or bf16 CPU autocast."""
    return x.dtype == torch.bfloat16 or autocast_bf16()


def plain_ops_traced(x: torch.Tensor) -> bool:
    """Whether the fast path runs the reference's plain ops on ``x`` instead of its own: a CPU
    tensor, while ``torch.compile`` traces an inference graph (no autograd) with inductor's
    ``freezing`` on (``torch._inductor.config.freezing``, read at tracing), where
    :data:`PLAIN_OPS_WHEN_FROZEN`; not in bf16 where the tile-unit kernels run."""
    return (
        PLAIN_OPS_WHEN_FROZEN
        and x.device.type == 'cpu'
        and torch.compiler.is_compiling()
        and not torch.is_grad_enabled()
        and _freezing()
        and not (_in_bf16(x) and _tile_kernels_run())
    )


def define_cpu_op(schema: str, kernel: Callable, fake: Callable) -> torch._ops.OpOverloadPacket:
    """Define ``mmdeit::<name>`` by ``schema`` (e.g. ``'f(Tensor x) -> Tensor'``) with
    ``kernel`` for CPU tensors and ``fake`` (shapes only) for tracing; returns the op."""
    name = schema.split('(', 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, kernel, 'CPU')
    torch.library.register_fake(f'mmdeit::{name}', fake, lib=_LIB)
    return getattr(torch.ops.mmdeit, name)
