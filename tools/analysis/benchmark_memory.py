"""Peak memory of a training step, one fresh subprocess per configuration (``benchmark.py``).

On CPU (Linux) the peak is the process's peak resident set size ``VmHWM``, reset just before
the steps (``/proc/self/clear_refs``) and compared with the resident set size ``VmRSS`` at that
moment; a fresh process per configuration keeps the configurations from sharing freed heap
memory. (``getrusage``'s ``ru_maxrss`` would not do: it keeps the peak of the process image
before ``exec``, i.e. of the forking benchmark process.) On CUDA it is
``torch.cuda.max_memory_allocated``.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import benchmark_models as bm
import torch
from benchmark_timing import Device


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open('/proc/self/status') as f:
        return int(re.search(rf'{field}:\s+(\d+)', f.read()).group(1)) / 1024  # kB -> MiB


def _reset_peak_rss() -> bool:
    """Reset the peak resident set size of this process (Linux >= 4.0); False if impossible."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _tensor_peak_mb(fn) -> Optional[float]:
    """Peak of the tensor memory allocated by ``fn`` above what was live before (MiB).

    Read from the torch profiler's allocation events (``profile_memory=True``); the CPU
    counterpart of ``torch.cuda.max_memory_allocated() - memory_allocated()``. None if the
    profiler does not expose them.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    except AttributeError:
        return None
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def memory_child(spec: dict) -> dict:
    """One configuration in a fresh process: peak memory of two training steps.

    The first step is timed; on CPU the second one runs under the profiler, which gives the
    peak tensor memory of a step (with the optimizer state already allocated).
    """
    torch.set_num_threads(spec['threads'])
    dev = Device(spec['device'])
    args = argparse.Namespace(**spec['args'])
    model = bm.build_mmdeit(spec['arch'], bm.model_cfg(args), with_cp=spec['with_cp']).to(dev.kind)
    batch = spec['batch']
    x = torch.randn(batch, 3, args.img_size, args.img_size, device=dev.kind)
    y = torch.randint(0, args.num_classes, (batch,), device=dev.kind)
    opt = bm.make_adamw(model.parameters(), args.adamw, batch)
    step = bm.make_train_step(model.train(), opt, x, y, dev.autocast)
    linux = os.path.exists('/proc/self/status')
    if dev.cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
        kind = 'torch.cuda.max_memory_allocated'
    elif linux:
        reset = _reset_peak_rss()
        before = _status_mb('VmRSS')
        kind = 'VmHWM (peak RSS) ' + ('reset before the steps' if reset else 'since start')
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
        kind = 'getrusage ru_maxrss (peak RSS since start)'
    with dev.sdpa():
        step_s = dev.timed(step)
        if dev.cuda:
            step()
            tensor_peak = torch.cuda.max_memory_allocated() / 2**20 - before
        else:
            tensor_peak = _tensor_peak_mb(step)
    if dev.cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    elif linux:
        peak = _status_mb('VmHWM')
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        peak_mb=peak,
        before_step_mb=before,
        step_increase_mb=peak - before,
        tensor_peak_mb=tensor_peak,
        measure=kind,
        step_s=step_s,
    )


def _run_child(script: str, spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(script), '--memory-child', json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(
            f'memory run {spec["arch"]} with_cp={spec["with_cp"]} failed:\n{out.stderr}'
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(args, script: str) -> List[dict]:
    """Each arch of ``args.memory_archs`` with and without ``with_cp``, one process each.

    ``args.memory_jobs`` processes run at a time; with more than one the memory figures are
    unaffected but the step times (``step_s``) share the CPU and are not comparable.
    """
    specs = [
        dict(
            arch=bm.parse_arch(text),
            with_cp=with_cp,
            batch=args.memory_batch,
            device=args.device,
            threads=args.threads,
            args=vars(args),
        )
        for text in args.memory_archs
        for with_cp in (False, True)
    ]
    with ThreadPoolExecutor(max_workers=args.memory_jobs) as pool:
        results = list(pool.map(lambda spec: _run_child(script, spec), specs))
    return [
        dict(
            arch=bm.arch_label(spec['arch']),
            with_cp=spec['with_cp'],
            batch=spec['batch'],
            concurrent_jobs=args.memory_jobs,
            **result,
        )
        for spec, result in zip(specs, results)
    ]
