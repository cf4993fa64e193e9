"""Host time against device time of one inference call (or training step), per library and
compile mode.

At small batches on a GPU the wall time of a forward is the host launching kernels, not the
kernels (``docs/benchmarks.md``, the H200 section): this tool says which of the two bounds each
library. With ``--train`` the call is an eager training step (``deit_models.train_step``: forward,
loss, backward, fused AdamW). For mmdeit, timm and mmdeit's ``fast_path=False``
(``deit_models.build_models``, the same weights), eager and compiled in each ``--compile`` mode
(``deploy_peers.COMPILE_MODES``: ``default``, ``max-autotune`` with freezing;
``reduce-overhead``, CUDA graphs, on a GPU only), it times in interleaved rounds:

* ``wall``: one call between device synchronisations (best of the rounds);
* ``host``: the same call without waiting for the device at its end (how long the host is busy
  issuing it; equal to ``wall`` on the CPU);

and profiles a few calls (``torch.profiler``): on CUDA the kernels per call and their device
time, on the CPU the aten ops per call and their CPU time; and on either the ``--host-ops``
host ops with the most self time (what the host does besides launching). A library whose
``host`` is close to its ``wall`` and well above its device time is bound by the host. Example::

    python tools/analysis/launch_profile.py --device cuda --dtype bf16 --batch 8 \\
        --compile default reduce-overhead --out work_dirs/launch_profile.json
"""

import argparse
import json
import logging
import time
from typing import Callable, Dict, List, Optional

import torch

try:  # imported as tools.analysis.launch_profile
    from . import deit_models as dm
    from . import deploy_peers as peers
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm
    import deploy_peers as peers

LIBS = ('mmdeit', 'timm', dm.REFERENCE)
logger = logging.getLogger('launch_profile')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line; bad values are refused naming the flag."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    dm.add_model_args(p)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    p.add_argument('--dtype', default='bf16', choices=['fp32', 'bf16'], help='bf16: autocast')
    p.add_argument(
        '--compile', nargs='*', default=[], choices=list(peers.COMPILE_MODES), help='compiled modes'
    )
    p.add_argument('--rounds', type=int, default=30)
    p.add_argument('--profiled-calls', type=int, default=5)
    p.add_argument('--host-ops', type=int, default=8, help='the costliest host ops to list')
    p.add_argument(
        '--train', action='store_true', help='a training step (eager) instead of inference'
    )
    p.add_argument('--libs', nargs='+', default=list(LIBS), choices=LIBS, help='the libraries')
    p.add_argument('--out', help='write the report as JSON here')
    args = p.parse_args(argv)
    if args.host_ops < 0:
        raise ValueError(f'--host-ops must be >= 0, got {args.host_ops}')
    for name in ('batch', 'rounds', 'profiled_calls'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: no CUDA device is available')
    if args.train and args.compile:
        raise ValueError('--train profiles eager training steps: it takes no --compile')
    cuda_only = [m for m in args.compile if m in peers.CUDA_ONLY_MODES]
    if args.device != 'cuda' and cuda_only:
        raise ValueError(f'--compile {cuda_only[0]} replays CUDA graphs: it needs --device cuda')
    # the fields deit_models reads
    args.drop_path_rate, args.seed, args.infer_batch = 0.1, 0, args.batch
    return args


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def call_fns(args, models: Dict[str, torch.nn.Module]) -> Dict[str, Callable[[], object]]:
    """``'<lib> [<mode>]'``: one batch's ``predict`` without autograd, eager or compiled with
    the settings of ``deploy_peers.COMPILE_MODES`` (each compiled mode is compiled, and its CUDA
    graphs recorded, by untimed calls here); with ``--train``, ``'<lib> [train]'``: an eager
    training step (the models are put in train mode)."""
    from torch._inductor import config as inductor_config

    fns = {}
    if args.train:
        for lib in args.libs:
            fns[f'{lib} [train]'] = step = dm.train_step(args, models[lib], args.batch)
            for _ in range(2):  # the optimizer's state, the allocator's blocks
                step()
        return fns
    x = dm.batch_data(args, args.batch)[0]
    for mode in ('eager', *args.compile):
        for lib in args.libs:
            model = models[lib].eval()
            fn, settings = model.predict, {}
            if mode != 'eager':
                torch_mode, settings = peers.COMPILE_MODES[mode]
                fn = torch.compile(fn, mode=torch_mode)

            def call(fn=fn):
                with torch.no_grad(), dm.autocast(args):
                    return fn(x)

            start = time.perf_counter()
            with inductor_config.patch(settings):
                for _ in range(3):  # compiles; records and warms the CUDA graphs
                    call()
            _sync(args.device)
            logger.info('%s [%s]: ready in %.1f s', lib, mode, time.perf_counter() - start)
            fns[f'{lib} [{mode}]'] = call
    return fns


def time_rounds(args, fns: Dict[str, Callable[[], object]]) -> Dict[str, dict]:
    """Best ``wall`` and ``host`` seconds of each function over interleaved rounds."""
    wall = {n: [] for n in fns}
    host = {n: [] for n in fns}
    names = list(fns)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # the order rotates
            _sync(args.device)
            start = time.perf_counter()
            fns[name]()
            host[name].append(time.perf_counter() - start)
            _sync(args.device)
            wall[name].append(time.perf_counter() - start)
    return {n: dict(wall_s=min(wall[n]), host_s=min(host[n]), times_s=wall[n]) for n in names}


def profile_calls(args, fn: Callable[[], object]) -> dict:
    """Kernels (CUDA) or aten ops (CPU) per call, and their device or CPU seconds per call."""
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device == 'cuda'
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda
    with profile(activities=activities) as prof:
        for _ in range(args.profiled_calls):
            fn()
        _sync(args.device)
    averages = prof.key_averages()
    if cuda:
        events = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
        seconds = sum(e.self_device_time_total for e in events) / 1e6
    else:
        events = [e for e in averages if e.key.startswith('aten::')]
        seconds = sum(e.self_cpu_time_total for e in events) / 1e6
    n = args.profiled_calls
    host = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU]
    host.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    host_ops = [  # where the host's time goes: the op, its self seconds and calls per call
        dict(op=e.key, self_s=e.self_cpu_time_total / 1e6 / n, calls=e.count / n)
        for e in host[: args.host_ops]
    ]
    return dict(launches=sum(e.count for e in events) / n, busy_s=seconds / n, host_ops=host_ops)


def main(argv: Optional[List[str]] = None) -> dict:
    """Build, time, profile; print the table, write ``--out``, return the report."""
    from mmengine.logging import MMLogger

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    args = parse_args(argv)
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    torch.manual_seed(args.seed)
    models = {n: m.to(args.device) for n, m in dm.build_models(args, ablation=True).items()}
    fns = call_fns(args, models)
    results = time_rounds(args, fns)
    for name, fn in fns.items():
        results[name].update(profile_calls(args, fn))
    unit = 'kernels' if args.device == 'cuda' else 'aten ops'
    what = 'training step' if args.train else 'call'
    print(f'\n{args.device} {args.dtype} batch {args.batch}: ms per {what}')
    print(f'{"library [mode]":<42}{"wall":>9}{"host":>9}{"busy":>9}{unit:>10}')
    for name, r in results.items():
        cells = [f'{1e3 * r[k]:>9.3f}' for k in ('wall_s', 'host_s', 'busy_s')]
        print(f'{name:<42}' + ''.join(cells) + f'{r["launches"]:>10.0f}')
    for name, r in results.items():
        if r['host_ops']:
            print(f'\n{name}: the costliest host ops, µs of self time (calls) per call')
        for op in r['host_ops']:
            print(f'  {1e6 * op["self_s"]:>9.1f}  ({op["calls"]:g})  {op["op"][:90]}')
    info = dict(torch=torch.__version__, device=args.device)
    if args.device == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    report = dict(machine=info, args=vars(args), results=results)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
