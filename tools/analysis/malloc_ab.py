"""mmdeit alone under glibc's own malloc thresholds against freed memory kept, in fresh processes.

:func:`mmdeit.engine.keep_freed_memory` changes a whole process, so the two settings cannot
alternate inside one: this tool starts ``--pairs`` pairs of processes in turn (glibc, kept,
glibc, kept, ...), each building the model, making two untimed calls, then timing ``--calls``
calls (inference under ``inference_mode``, or a training step: forward, cross-entropy of both
heads, backward, AdamW) and counting the page faults of each (``getrusage``). One line per
process as it ends, a summary at the end, ``--out`` for the JSON::

    python tools/analysis/malloc_ab.py --arch deit-small --dtype bf16 --section inference
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch

try:  # imported as tools.analysis.malloc_ab
    from . import deit_models as dm
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm

MODES = ('glibc', 'keep')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    dm.add_model_args(p)
    p.add_argument('--dtype', default='bf16', choices=['fp32', 'bf16'], help='bf16: autocast')
    p.add_argument('--section', default='inference', choices=['inference', 'train'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--calls', type=int, default=12, help='timed calls per process')
    p.add_argument('--pairs', type=int, default=3, help='pairs of processes (glibc, kept)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--child', choices=MODES, help=argparse.SUPPRESS)
    p.add_argument('--out', help='write the results as JSON here')
    args = p.parse_args(argv)
    dm.require_positive(p, args, ('batch', 'calls', 'pairs', 'threads'))
    return args


def child(args: argparse.Namespace) -> dict:
    """One process's measurement under ``args.child``'s setting."""
    from mmdeit.engine import freed_memory_setting, keep_freed_memory

    if args.child == 'keep':
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    run = argparse.Namespace(**vars(args), device='cpu', seed=0, drop_path_rate=0.1)
    run.infer_batch = args.batch
    model = dm.build_deit('mmdeit', run)
    if args.section == 'inference':
        fn = dm.predict_fn(run, model)
    else:
        fn = dm.train_step(run, model, args.batch)
    for _ in range(2):
        fn()
    times, faults = [], []
    for _ in range(args.calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return dict(
        mode=args.child,
        kept=freed_memory_setting(),
        best_s=min(times),
        median_s=statistics.median(times),
        faults_median=statistics.median(faults),
        times_s=times,
        faults=faults,
    )


def _child_argv(args: argparse.Namespace, mode: str) -> List[str]:
    argv = [sys.executable, os.path.abspath(__file__), '--child', mode]
    for name in ('arch', 'img_size', 'patch_size', 'num_classes', 'dtype', 'section'):
        argv += [f'--{name.replace("_", "-")}', str(getattr(args, name))]
    for name in ('batch', 'calls', 'threads'):
        argv += [f'--{name}', str(getattr(args, name))]
    return argv


def main(argv=None) -> Dict[str, list]:
    """Run the pairs of processes; print and return ``{mode: [result per process]}``."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'
    }
    results: Dict[str, list] = {mode: [] for mode in MODES}
    for pair in range(args.pairs):
        for mode in MODES:
            out = subprocess.run(
                _child_argv(args, mode), env=env, capture_output=True, text=True, check=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[mode].append(r)
            print(
                f'pair {pair + 1}/{args.pairs} {mode:<5} best {r["best_s"]:.3f} s, median '
                f'{r["median_s"]:.3f} s, {r["faults_median"]:.0f} page faults a call',
                flush=True,
            )
    for mode in MODES:
        medians = ', '.join(f'{r["median_s"]:.3f}' for r in results[mode])
        print(f'{mode}: medians {medians} s')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), results=results), f, indent=1)
    return results


if __name__ == '__main__':
    main()
