"""Peak memory of mmdeit's training step for ``benchmark.py --memory-archs``: each arch with
and without ``with_cp``, each in a fresh process (CPU: Linux's peak resident set size and the
profiler's tensor peak; CUDA: the allocator's peak)."""

import argparse
import logging
import multiprocessing
import re
from typing import List

import torch

try:  # imported as tools.analysis.step_memory
    from . import deit_models as dm
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm

Fn = dm.Fn


def _proc_status_mb(field: str) -> float:
    with open('/proc/self/status') as f:
        return int(re.search(rf'{field}:\s+(\d+)', f.read()).group(1)) / 1024


def tensor_peak_mb(fn: Fn) -> float:
    """Peak of the tensor memory allocated during ``fn``, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]']
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def memory_child(spec: dict) -> dict:
    """In a fresh process: mmdeit's peak memory in a training step (CPU: Linux's peak RSS)."""
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # no init_weights messages
    args = argparse.Namespace(**{**spec['args'], 'arch': spec['arch']})
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = dm.build_deit('mmdeit', args, with_cp=spec['with_cp'])
    model = model.to(args.device, dm.model_dtype(args))
    step = dm.train_step(args, model, args.train_batch)
    if args.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # resets the peak resident set size, VmHWM
        before = _proc_status_mb('VmRSS')
    step_s = dm.timed(args, step)[0]
    if args.device == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2**20
        tensors = peak - before
    else:
        peak = _proc_status_mb('VmHWM')
        tensors = tensor_peak_mb(step)  # a second step: the optimizer state is allocated
    return dict(
        arch=args.arch,
        with_cp=spec['with_cp'],
        batch=args.train_batch,
        peak_mb=peak,
        step_increase_mb=peak - before,
        tensor_peak_mb=tensors,
        step_s=step_s,
    )


def bench_memory(args) -> List[dict]:
    """Each of ``--memory-archs`` with and without ``with_cp``, each in a fresh process."""
    specs = [
        dict(arch=arch, with_cp=cp, args=vars(args))
        for arch in args.memory_archs
        for cp in (False, True)
    ]
    with multiprocessing.get_context('spawn').Pool(args.memory_jobs, maxtasksperchild=1) as pool:
        return pool.map(memory_child, specs, chunksize=1)
