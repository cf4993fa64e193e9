"""mmdeit's own ops for compiled graphs (``torch.ops.mmdeit.*``): a CPU kernel and a fake.

The fast path's oneDNN linear and bf16 GEMM attention are single opaque ops of a
``torch.compile`` graph (``onednn_linear.py``, ``gemm_attention.py``). They are defined with
``torch.library.Library`` and a kernel for the CPU dispatch key only, not with
``torch.library.custom_op``: the latter's Python wrapping cost ~15 µs a call (35.8 against 20.7
µs for a tiny linear, measured on an AVX-512 host), this form ~4 (24.7); compiled DeiT-S in
bf16 at batch 8 took 188-197 against 202 ms (docs/benchmarks.md). Both ops have no backward;
they are called only without autograd.
"""

from typing import Callable

import torch

_LIB = torch.library.Library('mmdeit', 'FRAGMENT')  # kept alive with the module


def define_cpu_op(schema: str, kernel: Callable, fake: Callable) -> torch._ops.OpOverloadPacket:
    """Define ``mmdeit::<name>`` by ``schema`` (e.g. ``'f(Tensor x) -> Tensor'``) with
    ``kernel`` for CPU tensors and ``fake`` (shapes only) for tracing; returns the op."""
    name = schema.split('(', 1)[0]
    _LIB.define(schema)
    _LIB.impl(name, kernel, 'CPU')
    torch.library.register_fake(f'mmdeit::{name}', fake, lib=_LIB)
    return getattr(torch.ops.mmdeit, name)
