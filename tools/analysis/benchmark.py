"""Speed of mmdeit's distilled DeiT next to mmpretrain 1.2's and timm's, in one process.

Every library is built here holding mmdeit's random weights (strict loads; the logits are
compared), gets the same inputs and thread count, and is timed in interleaved rounds: each round
calls every library once, in an order drawn anew each round (``--order-seed``, drawn for the
run unless given, kept in the report), and a large ``torch.mm`` whose best time is the matmul
peak of the roofline, sampled under the same load; each call starts ``--settle`` seconds (0.1)
after the previous one ended, on idle cores (ONNX Runtime's threads spin on for tens of ms after
a run: a DeiT-S forward right after it took 1.2x its time).
Timed: inference (``predict`` under ``inference_mode``), a training step (forward, mean
cross-entropy of both heads, backward, fused AdamW) and a hard-distillation step with the
teacher's call timed inside it; optionally a profile of mmdeit's calls and its peak memory in a
step (a fresh process each). ``mmdeit (fast_path=False)``, the same backbone with its speed
measures off, runs as one more library (the ablation). FLOPs are what torch's
``FlopCounterMode`` counts in one untimed call of each library (a multiply and an add are 2
FLOPs). ``--dtype bf16`` runs everything under bf16 autocast, ``bf16-model`` with the models and
inputs cast to bf16 (several values: one run each, in turn); ``--sdpa`` allows one attention
kernel only. ``--compile`` and ``--onnxruntime`` add deployment peers to the inference section
(``deploy_peers.py``): ``torch.compile`` of mmdeit and timm, and ONNX Runtime on mmdeit's
export; ``--ablate SWITCH ...`` adds mmdeit with each named fast-path switch off to the sections
the switch changes (``switch_ablation.py``; ``--prepack-ablation`` is ``--ablate prepack``). The
process keeps freed memory for its next tensors as mmdeit's tools make it
(``mmdeit.engine.keep_freed_memory``; every library runs under it), ``--malloc glibc`` leaves
glibc's thresholds alone. The tool reports numbers and judges none; see ``docs/benchmarks.md``.
Example::

    python tools/analysis/benchmark.py --arch deit-small --out work_dirs/benchmark.json
"""

import argparse
import functools
import json
import logging
import os
import random
import statistics
import time
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn
from torch.utils import benchmark as torch_benchmark

try:  # imported as tools.analysis.benchmark
    from . import deit_models as dm
    from . import deploy_peers as peers
    from .benchmark_report import machine_info, print_report
    from .op_profile import profile_summary
    from .step_memory import bench_memory
    from .switch_ablation import SWITCHES, ablation_name, ablations
except ImportError:  # run as a script: this folder is on sys.path
    import deit_models as dm
    import deploy_peers as peers
    from benchmark_report import machine_info, print_report
    from op_profile import profile_summary
    from step_memory import bench_memory
    from switch_ablation import SWITCHES, ablation_name, ablations

Fn = dm.Fn
#: ``--prepack-ablation`` (``--ablate prepack``): mmdeit with its oneDNN weights row-major.
NO_PREPACK = ablation_name('prepack')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    dm.add_model_args(p)
    p.add_argument('--infer-batch', type=int, default=8)
    p.add_argument('--train-batch', type=int, default=64)
    p.add_argument('--rounds', type=int, default=7, help='timed inference rounds')
    p.add_argument('--train-rounds', type=int, default=5, help='timed training rounds')
    p.add_argument('--warmup', type=int, default=1, help='untimed rounds after the counted call')
    dm.add_settle_arg(p)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    dtypes = ['fp32', 'bf16', 'bf16-model']  # bf16-model: models and inputs cast to bf16
    p.add_argument(
        '--dtype',
        nargs='+',
        default=['fp32'],
        choices=dtypes,
        help='bf16: fp32 under autocast; several: one run each, one report per dtype',
    )
    p.add_argument('--sdpa', default='auto', choices=list(dm.SDPA_BACKENDS), help='attention')
    p.add_argument('--drop-path-rate', type=float, default=0.1, help='stochastic depth')
    p.add_argument('--teacher', default='regnety_016', help="a timm model name, or 'none'")
    p.add_argument('--teacher-channels-last', action='store_true')
    p.add_argument('--no-ablation', action='store_true', help=f'leave out {dm.REFERENCE}')
    p.add_argument('--profile', action='store_true', help="profile mmdeit's calls")
    p.add_argument(
        '--ablate',
        nargs='+',
        default=[],
        choices=list(SWITCHES),
        metavar='SWITCH',
        help='also mmdeit with each of these fast-path switches off, in the sections it '
        'changes: ' + '; '.join(f'{k}: {v.doc}' for k, v in SWITCHES.items()),
    )
    p.add_argument(
        '--prepack-ablation',
        action='store_true',
        help=f'the same as --ablate prepack: also {NO_PREPACK}',
    )
    p.add_argument(
        '--compile',
        nargs='+',
        default=[],
        choices=list(peers.COMPILE_MODES),
        help='inference peers: torch.compile of mmdeit and timm in these modes',
    )
    p.add_argument(
        '--onnxruntime',
        action='store_true',
        help="inference peer: ONNX Runtime (fp32) on mmdeit's ONNX export",
    )
    dm.add_malloc_arg(p)
    p.add_argument('--memory-archs', nargs='*', default=[], help='peak memory of a step, each arch')
    p.add_argument('--memory-jobs', type=int, default=1, help='memory processes at a time')
    p.add_argument('--seed', type=int, default=0, help='seed of the weights and inputs')
    p.add_argument(
        '--order-seed',
        type=int,
        help="seed of the rounds' call orders (default: drawn for the run, kept in the report)",
    )
    p.add_argument(
        '--mm-size',
        type=int,
        help='n of the n x n torch.mm roofline (default: 8192 on cuda, 2048 on cpu)',
    )
    p.add_argument('--out', help='write the report as JSON here')
    args = p.parse_args(argv)
    if args.prepack_ablation and 'prepack' not in args.ablate:
        args.ablate.append('prepack')
    if args.order_seed is None:  # each run its own orders: a position effect does not repeat
        args.order_seed = random.SystemRandom().randrange(2**31)
    if args.mm_size is None:
        args.mm_size = 8192 if args.device == 'cuda' else 2048
    counts = ('infer_batch', 'train_batch', 'rounds', 'train_rounds', 'threads', 'mm_size')
    for name in (*counts, 'memory_jobs', 'warmup', 'settle'):
        low = 0 if name in ('warmup', 'settle') else 1
        if getattr(args, name) < low:
            flag = name.replace('_', '-')
            raise ValueError(f'--{flag} must be >= {low}, got {getattr(args, name)}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: no CUDA device is available')
    cuda_only = [m for m in args.compile if m in peers.CUDA_ONLY_MODES]
    if args.device != 'cuda' and cuda_only:
        raise ValueError(f'--compile {cuda_only[0]} replays CUDA graphs: it needs --device cuda')
    if args.device == 'cuda' and args.onnxruntime:
        raise ValueError('--onnxruntime runs on the CPU only, got --device cuda')
    return args


def run_rounds(args, fns: Dict[str, Fn], rounds: int, label: str) -> Dict[str, dict]:
    """``args.warmup`` untimed rounds, then ``rounds`` timed ones; each calls every function,
    ``args.settle`` seconds after the previous call ended, in an order drawn for the round
    (``args.order_seed`` and ``label``): in a fixed cyclic order each function always follows
    the same one, and the first (mmdeit) followed the roofline's large GEMMs, which left it ~1 %
    slower than an identical function elsewhere in the order (fp32, DeiT-S, measured). The seed
    is drawn anew for each run unless given: with one fixed seed every run drew the same orders,
    so a position effect came back in each (3 rounds of fp32 training, docs/benchmarks.md)."""
    names, rng = list(fns), random.Random(f'{args.order_seed}:{label}')
    wall: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(args.warmup + rounds):
        for name in rng.sample(names, len(names)):
            time.sleep(args.settle)  # the previous call's spinning threads go to sleep
            wall_s, cpu_s = dm.timed(args, fns[name])
            if r >= args.warmup:
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
    out = {}
    for n in names:
        spec = torch_benchmark.TaskSpec(n, '', label=label, num_threads=args.threads)
        m = torch_benchmark.Measurement(1, wall[n], spec)
        out[n] = dict(
            best_s=min(wall[n]),
            median_s=m.median,
            iqr_s=m.iqr,
            noisy=not m.meets_confidence(),  # the IQR is over 10 % of the median
            best_cpu_s=min(cpu[n]),
            times_s=wall[n],
        )
    return out


def bench_section(
    args,
    fns: Dict[str, Fn],
    batch: int,
    rounds: int,
    label: str,
    shapes,
    flops_of: Optional[Dict[str, Union[str, Fn]]] = None,
) -> dict:
    """Each library's FLOPs in a first, untimed call; then interleaved rounds with two rooflines:
    ``torch.mm`` at n x n and at the model's GEMM ``shapes`` (``(m, k, n)``, in sequence).
    ``flops_of`` gives, for a function not counted itself (a compiled or exported peer), the
    name of the function whose count it takes, or an eager function to count instead."""
    flops_of = flops_of or {}
    flops = {name: dm.count_flops(fn) for name, fn in fns.items() if name not in flops_of}
    for name, eager in flops_of.items():
        flops[name] = flops[eager] if isinstance(eager, str) else dm.count_flops(eager)
    n = args.mm_size
    dtype = dm.compute_dtype(args)
    a, b = (torch.randn(n, n, device=args.device, dtype=dtype) for _ in range(2))
    new = functools.partial(torch.randn, device=args.device, dtype=dtype)
    pairs = [(new(m, k), new(k, o)) for m, k, o in shapes]
    mm = {'mm_peak': lambda: torch.mm(a, b), 'mm_shapes': lambda: [torch.mm(*p) for p in pairs]}
    res = run_rounds(args, {**fns, **mm}, rounds, label)
    peak = 2 * n**3 / res.pop('mm_peak')['best_s']
    shapes_peak = sum(2 * m * k * o for m, k, o in shapes) / res.pop('mm_shapes')['best_s']
    ours = res['mmdeit']
    for name, r in res.items():
        executed = flops[name]['total']
        paired = statistics.median(t / o for t, o in zip(r['times_s'], ours['times_s']))
        r.update(
            flops_per_image=executed / batch,
            flops_by_op=flops[name]['by_op'],
            img_per_s=batch / r['best_s'],
            gflops_per_s=executed / r['best_s'] / 1e9,
            roofline_fraction=executed / peak / r['best_s'],
            shapes_roofline_fraction=executed / shapes_peak / r['best_s'],
            over_mmdeit_best=r['best_s'] / ours['best_s'],
            over_mmdeit_paired=paired,  # the median over rounds of the ratio within a round
        )
    return dict(
        batch=batch, mm_peak_gflops=peak / 1e9, mm_shapes_gflops=shapes_peak / 1e9, results=res
    )


def bench_distill(args) -> dict:
    """A hard-distillation step, the same step without teacher, and the teacher alone.

    The difference of two full steps is often lost in their noise, so the teacher's call is
    also timed inside the step (``teacher_in_step``).
    """
    import timm
    from mmpretrain.structures import DataSample

    from mmdeit.models.classifiers import DistilledImageClassifier

    def classifier(mode: str, teacher) -> nn.Module:
        backbone = dm.build_deit('mmdeit', args).backbone
        head = dict(
            type='DeiTClsHead',
            num_classes=args.num_classes,
            in_channels=backbone.embed_dims,
            inference_mode='cls',
            loss=dict(type='DistillationLoss', mode=mode),
        )
        model = DistilledImageClassifier(
            backbone=backbone,
            head=head,
            teacher=teacher,
            teacher_channels_last=args.teacher_channels_last,
        )
        return model.to(args.device, dm.model_dtype(args))

    teacher = timm.create_model(args.teacher, pretrained=False, num_classes=args.num_classes)
    distilled, plain = classifier('hard', teacher), classifier('none', None)
    plain.load_state_dict(distilled.state_dict())
    x = dm.batch_data(args, args.train_batch)[0]
    labels = range(args.train_batch)
    samples = [DataSample().set_gt_label(i % args.num_classes).to(args.device) for i in labels]

    def step(model: nn.Module) -> Fn:
        def loss() -> torch.Tensor:
            return sum(v for k, v in model.loss(x, samples).items() if 'loss' in k)

        return dm.loss_step(args, model, loss, args.train_batch)

    teacher_logits, in_step = distilled.teacher_logits, []

    def timed_teacher_logits(inputs: torch.Tensor) -> torch.Tensor:
        out = []
        in_step.append(dm.timed(args, lambda: out.append(teacher_logits(inputs)))[0])
        return out[0]

    def teacher_alone() -> None:
        with dm.autocast(args):
            teacher_logits(x)  # the method the step calls

    fns = dict(with_teacher=step(distilled), without_teacher=step(plain))
    fns['teacher_forward'] = teacher_alone
    distilled.teacher_logits = timed_teacher_logits
    res = run_rounds(args, fns, args.train_rounds, 'distillation')
    in_step = in_step[args.warmup :]
    res['teacher_in_step'] = dict(
        best_s=min(in_step), median_s=statistics.median(in_step), times_s=in_step
    )
    return dict(teacher=args.teacher, channels_last=args.teacher_channels_last, results=res)


def main(argv=None) -> dict:
    """Run every measurement; print the table, write ``--out``, return the report.

    With several ``--dtype`` values the report is ``{dtype: report}``, one run per dtype.
    """
    from mmengine.logging import MMLogger

    args = parse_args(argv)
    dm.apply_malloc(args)
    threads, mm_logger = torch.get_num_threads(), MMLogger.get_current_instance()
    level = mm_logger.level
    torch.set_num_threads(args.threads)
    mm_logger.setLevel(logging.WARNING)  # no per-parameter init_weights messages
    reports = {}
    try:
        with dm.sdpa_context(args.sdpa):
            for dtype in args.dtype:  # one after the other, each printed when done
                reports[dtype] = run(argparse.Namespace(**{**vars(args), 'dtype': dtype}))
                print_report(reports[dtype])
    finally:
        torch.set_num_threads(threads)
        mm_logger.setLevel(level)
    report = reports[args.dtype[0]] if len(args.dtype) == 1 else reports
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    models = dm.build_models(args, ablation=not args.no_ablation)
    probe = torch.randn(2, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        outs = {n: m.eval().predict(probe) for n, m in models.items()}
    diff = {n: (o - outs['mmdeit']).abs().max().item() for n, o in outs.items()}
    report = dict(machine=machine_info(args), args=vars(args), parity_max_abs_diff=diff)
    models = {n: m.to(args.device, dm.model_dtype(args)) for n, m in models.items()}
    fns = {n: dm.predict_fn(args, m) for n, m in models.items()}
    flops_of = {}  # the deployment peers compute their eager library's products
    if args.compile:
        compiled, compiled_diff = peers.compiled_peers(args, models, args.compile)
        fns.update(compiled)
        report['peers_max_abs_diff'] = compiled_diff
        for mode in args.compile:
            flops_of.update({peers.compile_name(lib, mode): lib for lib in ('mmdeit', 'timm')})
    switched = ablations(args.ablate, fns['mmdeit'], 'inference')
    fns.update(switched)
    flops_of.update(dict.fromkeys(switched, 'mmdeit'))
    if args.onnxruntime:
        state = {k: v.float() for k, v in models['mmdeit'].state_dict().items()}
        fns[peers.ONNXRUNTIME], ort_diff, exported = peers.onnxruntime_peer(args, state)
        report.setdefault('peers_max_abs_diff', {})[peers.ONNXRUNTIME] = ort_diff
        flops_of[peers.ONNXRUNTIME] = exported  # the plain path's model
    shapes = functools.partial(dm.gemm_shapes, models['mmdeit'])
    report['inference'] = bench_section(
        args,
        fns,
        args.infer_batch,
        args.rounds,
        'inference',
        shapes(args.infer_batch),
        flops_of,
    )
    fns = {n: dm.train_step(args, m, args.train_batch) for n, m in models.items()}
    switched = ablations(args.ablate, fns['mmdeit'], 'train')  # mmdeit's step, switch off
    report['train'] = bench_section(
        args,
        {**fns, **switched},
        args.train_batch,
        args.train_rounds,
        'train',
        shapes(args.train_batch),
        dict.fromkeys(switched, 'mmdeit'),
    )
    if args.teacher.lower() != 'none':
        report['distillation'] = bench_distill(args)
    if args.profile:
        report['profile_inference'] = profile_summary(
            dm.predict_fn(args, models['mmdeit']), args.device
        )
        step = dm.train_step(args, models['mmdeit'], args.train_batch)
        report['profile_train'] = profile_summary(step, args.device)
    if args.memory_archs:
        report['memory'] = bench_memory(args)
    report['machine']['loadavg_end'] = list(os.getloadavg())
    return report


if __name__ == '__main__':
    main()
