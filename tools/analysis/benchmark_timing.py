"""Timing helpers of ``benchmark.py``: the device, interleaved rounds, the matmul peak.

Every timed call is bracketed by a device synchronisation; rounds interleave the compared
functions in a rotating order so that a change of machine load hits all of them alike.
"""

import contextlib
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Tuple

import torch


class Device:
    """Synchronisation, autocast (bf16 on CUDA, none on CPU) and the SDPA backends of a device."""

    def __init__(self, kind: str):
        self.kind = kind
        self.cuda = kind == 'cuda'

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def autocast(self):
        if self.cuda:
            return torch.autocast('cuda', dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def sdpa(self):
        if not self.cuda:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(order, set_priority=True)

    def timed(self, fn: Callable[[], object]) -> float:
        """Wall-clock seconds of one call."""
        return self.timed_both(fn)[0]

    def timed_both(self, fn: Callable[[], object]) -> Tuple[float, float]:
        """Wall-clock and process CPU seconds (all threads) of one call."""
        self.sync()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return time.perf_counter() - start, time.process_time() - cpu


def run_rounds(dev: Device, fns: Dict[str, Callable], rounds: int, warmup: int) -> Dict:
    """Interleaved timing: every round calls every function once, in a rotating order.

    Returns per function the wall-clock times (``times_s``, ``best_s``, ``median_s``) and the
    process CPU times (``cpu_s``, ``best_cpu_s``): on a shared machine the CPU time is less
    disturbed by other processes than the wall time (it misses the time this process waits
    for a core, though not the spinning of a thread that waits for a descheduled one).
    """
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            wall, cpu_s = dev.timed_both(fns[name])
            if r >= warmup:
                times[name].append(wall)
                cpu[name].append(cpu_s)
    return {
        n: dict(
            best_s=min(times[n]),
            median_s=statistics.median(times[n]),
            times_s=times[n],
            best_cpu_s=min(cpu[n]),
            cpu_s=cpu[n],
        )
        for n in names
    }


def machine_info(dev: Device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
        cpu = next(
            (ln.split(':', 1)[1].strip() for ln in out.splitlines() if 'Model name' in ln), cpu
        )
    info = dict(
        cpu=cpu,
        logical_cpus=os.cpu_count(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        python=platform.python_version(),
        device=dev.kind,
        mkldnn=torch.backends.mkldnn.is_available(),
        loadavg_start=list(os.getloadavg()),
    )
    if dev.cuda:
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def mm_peak_fn(dev: Device):
    """A large square matmul (fp32 on CPU, bf16 on CUDA) and its FLOPs."""
    n = 8192 if dev.cuda else 2048
    dtype = torch.bfloat16 if dev.cuda else torch.float32
    a, b = (torch.randn(n, n, device=dev.kind, dtype=dtype) for _ in range(2))
    return (lambda: torch.mm(a, b)), 2 * n**3


_MATMULS = {'addmm', 'addmm_', 'mm', 'bmm', 'baddbmm', 'matmul'}


def op_category(name: str) -> str:
    """A coarse class of a profiled op or GPU kernel.

    One of matmul, attention, conv, gelu, layer_norm, copy, other.
    """
    base = name.split('::')[-1]
    low = base.lower()
    if any(k in low for k in ('scaled_dot_product', 'flash', 'fmha')):
        return 'attention'
    if 'conv' in low:
        return 'conv'
    if base in _MATMULS or any(k in low for k in ('gemm', 'cutlass', 'xmma')):
        return 'matmul'
    if base == '_linear_pointwise':  # oneDNN linear (+ fused GELU): mmdeit's CPU inference
        return 'matmul'
    for key in ('gelu', 'layer_norm'):
        if key in low:
            return key
    return 'copy' if base in ('copy_', 'clone') else 'other'


def profile_summary(dev: Device, fn: Callable, top: int = 12) -> dict:
    """Self time of the top ops of one call of ``fn`` and the share of each op category (%)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.cuda else [])
    fn()
    with dev.sdpa(), profile(activities=acts) as prof:
        fn()
        dev.sync()
    attr = 'self_device_time_total' if dev.cuda else 'self_cpu_time_total'
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events)
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    categories: Dict[str, float] = {}
    for e in events:
        cat = op_category(e.key)
        categories[cat] = categories.get(cat, 0.0) + 100 * getattr(e, attr) / total
    ops = [
        dict(
            op=e.key,
            self_ms=getattr(e, attr) / 1e3,
            percent=100 * getattr(e, attr) / total,
            calls=e.count,
        )
        for e in events[:top]
    ]
    return dict(total_ms=total / 1e3, categories=categories, top_ops=ops)
