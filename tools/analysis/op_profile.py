"""Where one call's time goes: the torch profiler's top ops and each op kind's share.

Used by ``benchmark.py --profile``; the kinds are matched on the op names of the CPU (aten,
oneDNN) and CUDA (cuBLAS/CUTLASS kernels) profiles.
"""

from typing import Callable, Dict

import torch

CATEGORIES = (
    # bmm and softmax: mmdeit's bf16 attention as GEMMs (the loss's log_softmax counts too)
    ('attention', ('scaled_dot_product', 'flash', 'fmha', 'bmm', 'softmax')),
    ('conv', ('conv',)),
    ('matmul', ('mm', 'matmul', 'linear', 'gemm', 'cutlass', 'xmma', 'nvjet')),
    ('gelu', ('gelu',)),
    ('layer_norm', ('layer_norm',)),
    ('copy', ('copy_', 'clone')),
)


def op_category(name: str) -> str:
    """The first category of ``CATEGORIES`` whose key the op's name contains, else 'other'."""
    low = name.split('::')[-1].lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), 'other')


def profile_summary(fn: Callable[[], object], device: str = 'cpu', top: int = 12) -> dict:
    """Self time of the top ops of one call of ``fn`` (after one unprofiled call), and each op
    category's share (%); device time on CUDA, CPU time otherwise."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        fn()
        sync()
    attr = 'self_device_time_total' if cuda else 'self_cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    shares: Dict[str, float] = {}
    for e in events:
        shares[op_category(e.key)] = shares.get(op_category(e.key), 0) + getattr(e, attr) / total
    ops = [dict(op=e.key, self_ms=getattr(e, attr) / 1e3, calls=e.count) for e in events[:top]]
    return dict(total_ms=total / 1e3, percent={k: 100 * v for k, v in shares.items()}, top_ops=ops)
