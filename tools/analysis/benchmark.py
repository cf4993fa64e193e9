"""Speed of mmdeit's DeiT against mmpretrain's and timm's, measured side by side.

Everything runs in ONE process (memory excepted: one subprocess per configuration), with the
same inputs and thread count for every library; the timed calls are interleaved round by round
(the order rotates) and the best and median of the rounds are reported. See
``docs/benchmarks.md`` for the method and results. Example::

    python tools/analysis/benchmark.py --arch deit-small --out work_dirs/benchmark.json

FLOPs count a multiply and an add separately (2 FLOPs per multiply-accumulate). The roofline is
the time the matmul FLOPs would take at the matmul peak the script measures itself (the best
``torch.mm`` of a large square matrix), so ``roofline fraction = roofline time / measured time``.
"""

import argparse
import contextlib
import copy
import json
import logging
import os
import statistics
import sys
import time
from typing import Callable, Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_models as bm  # noqa: E402
from benchmark_memory import bench_memory, memory_child  # noqa: E402
from benchmark_timing import (  # noqa: E402
    Device,
    machine_info,
    mm_peak_fn,
    profile_summary,
    run_rounds,
)

TARGETS = dict(inference_speedup=1.1, inference_roofline=0.8, train_speedup=1.15, distill=1.05)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--arch', default='deit-small', help='deit-tiny/small/base or a JSON arch dict')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--patch-size', type=int, default=16)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--infer-batch', type=int, default=8)
    p.add_argument('--train-batch', type=int, default=64)
    p.add_argument('--rounds', type=int, default=7, help='timed inference rounds (best-of)')
    p.add_argument('--train-rounds', type=int, default=5, help='timed training rounds')
    p.add_argument('--warmup', type=int, default=1, help='untimed rounds before timing')
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument(
        '--drop-path-rate', type=float, default=0.1, help='stochastic depth in training (DeiT: 0.1)'
    )
    p.add_argument('--adamw', default='default', choices=['default', 'foreach', 'fused'])
    p.add_argument('--teacher', default='regnety_016', help="a timm model name, or 'none'")
    p.add_argument('--teacher-channels-last', action='store_true')
    p.add_argument('--memory-archs', nargs='*', default=['deit-tiny', 'deit-small'])
    p.add_argument('--memory-batch', type=int, default=64)
    p.add_argument('--memory-jobs', type=int, default=1, help='memory runs at a time')
    p.add_argument('--profile', action='store_true', help="profile mmdeit's forward and step")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default=None, help='write the results as JSON here')
    p.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ('infer_batch', 'train_batch', 'rounds', 'train_rounds', 'threads', 'memory_jobs'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda: no CUDA device is available')
    return args


def bench_inference(args, dev: Device, models: Dict, flops: dict) -> dict:
    x = torch.randn(args.infer_batch, 3, args.img_size, args.img_size, device=dev.kind)
    peak_fn, peak_flops = mm_peak_fn(dev)

    def forward(model):
        def run():
            with torch.inference_mode(), dev.autocast():
                model.predict(x)

        return run

    fns = {name: forward(m.eval()) for name, m in models.items()}
    fns['mm_peak'] = peak_fn  # sampled under the same load, interleaved with the models
    with dev.sdpa():
        res = run_rounds(dev, fns, args.rounds, args.warmup)
    peak = res.pop('mm_peak')
    peak_gflops = peak_flops / peak['best_s'] / 1e9
    roofline_s = {}
    for name, r in res.items():
        # Each library's roofline is for the FLOPs it executes (mmdeit skips unused work).
        executed = flops['mmdeit_forward' if name == 'mmdeit' else 'forward']
        roofline_s[name] = executed * args.infer_batch / (peak_gflops * 1e9)
        r['img_per_s'] = args.infer_batch / r['best_s']
        r['gflops_per_s'] = executed * r['img_per_s'] / 1e9
        r['roofline_fraction'] = roofline_s[name] / r['best_s']
    return dict(
        batch=args.infer_batch,
        results=res,
        mm_peak_gflops=peak_gflops,
        roofline_s=roofline_s,
        loadavg_end=list(os.getloadavg()),
    )


def bench_train(args, dev: Device, models: Dict, flops: dict) -> dict:
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.train_batch, 3, args.img_size, args.img_size, generator=gen)
    y = torch.randint(0, args.num_classes, (args.train_batch,), generator=gen)
    x, y = x.to(dev.kind), y.to(dev.kind)
    fns = {}
    for name, model in models.items():
        opt = bm.make_adamw(model.parameters(), args.adamw, args.train_batch)
        fns[name] = bm.make_train_step(model.train(), opt, x, y, dev.autocast)
    with dev.sdpa():
        res = run_rounds(dev, fns, args.train_rounds, args.warmup)
    for name, r in res.items():
        executed = flops['mmdeit_train_step' if name == 'mmdeit' else 'train_step']
        r['img_per_s'] = args.train_batch / r['best_s']
        r['gflops_per_s'] = executed * r['img_per_s'] / 1e9  # expected, for mmdeit
    return dict(
        batch=args.train_batch, adamw=args.adamw, results=res, loadavg_end=list(os.getloadavg())
    )


def bench_adamw(args, dev: Device, model: torch.nn.Module) -> dict:
    """Time of one AdamW step over mmdeit's parameters for each torch implementation."""
    fns = {}
    for impl in ('default', 'foreach', 'fused'):
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        for p in params:
            p.grad = torch.randn_like(p)
        try:
            opt = bm.make_adamw(params, impl, args.train_batch)
            opt.step()
        except (RuntimeError, ValueError) as err:  # e.g. fused AdamW on an old torch
            print(f'AdamW {impl} is unavailable: {err}')
            continue
        fns[impl] = opt.step
    return run_rounds(dev, fns, max(args.rounds, 3), args.warmup)


def bench_distill(args, dev: Device, arch, embed_dims: int) -> dict:
    """A distillation training step vs the same step without teacher vs the teacher alone.

    Also the teacher alone in the other memory format (channels-last or not).
    """
    import timm
    from mmpretrain.structures import DataSample

    from mmdeit.models.classifiers import DistilledImageClassifier

    def classifier(mode: str, teacher):
        backbone = dict(
            type='DistilledVisionTransformer',
            arch=arch,
            img_size=args.img_size,
            patch_size=args.patch_size,
            drop_path_rate=args.drop_path_rate,
        )
        head = dict(
            type='DeiTClsHead',
            num_classes=args.num_classes,
            in_channels=embed_dims,
            inference_mode='cls',
            loss=dict(type='DistillationLoss', mode=mode),
        )
        model = DistilledImageClassifier(
            backbone=backbone,
            head=head,
            teacher=teacher,
            teacher_channels_last=args.teacher_channels_last,
        )
        return model.to(dev.kind).train()

    teacher = timm.create_model(args.teacher, pretrained=False, num_classes=args.num_classes)
    distilled, plain = classifier('hard', teacher), classifier('none', None)
    plain.load_state_dict(distilled.state_dict())
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.train_batch, 3, args.img_size, args.img_size, generator=gen)
    x = x.to(dev.kind)
    samples = [DataSample().set_gt_label(i % args.num_classes) for i in range(args.train_batch)]
    samples = [s.to(dev.kind) for s in samples]

    def step(model):
        opt = bm.make_adamw(model.parameters(), args.adamw, args.train_batch)

        def run():
            with dev.autocast():
                loss = sum(v for k, v in model.loss(x, samples).items() if 'loss' in k)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def teacher_only():
        with dev.autocast():
            teacher_logits(x)  # the unwrapped method (defined below)

    # The teacher alone in the other memory format, to show what teacher_channels_last buys.
    fmt = torch.contiguous_format if args.teacher_channels_last else torch.channels_last
    flipped = copy.deepcopy(distilled.teacher).to(memory_format=fmt)

    def teacher_flipped():
        with torch.inference_mode(), dev.autocast():
            flipped(x.contiguous(memory_format=fmt))

    other = 'contiguous' if args.teacher_channels_last else 'channels_last'
    # The teacher's share of the distillation step, timed inside it: the difference of two
    # full steps is often swamped by their noise on a shared machine.
    in_step, teacher_logits = [], distilled.teacher_logits

    def timed_teacher_logits(inputs):
        dev.sync()
        start = time.perf_counter()
        out = teacher_logits(inputs)
        dev.sync()
        in_step.append(time.perf_counter() - start)
        return out

    distilled.teacher_logits = timed_teacher_logits
    fns = dict(
        with_teacher=step(distilled), without_teacher=step(plain), teacher_forward=teacher_only
    )
    fns[f'teacher_forward_{other}'] = teacher_flipped
    with dev.sdpa():
        res = run_rounds(dev, fns, args.train_rounds, args.warmup)
    in_step = in_step[args.warmup :]
    res['teacher_in_step'] = dict(
        best_s=min(in_step), median_s=statistics.median(in_step), times_s=in_step
    )
    best = {k: v['best_s'] for k, v in res.items()}
    median = {k: v['median_s'] for k, v in res.items()}
    overhead = best['with_teacher'] - best['without_teacher']
    overhead_median = median['with_teacher'] - median['without_teacher']
    return dict(
        teacher=args.teacher,
        channels_last=args.teacher_channels_last,
        results=res,
        overhead_s=overhead,
        overhead_over_teacher=overhead / best['teacher_forward'],
        overhead_over_teacher_median=overhead_median / median['teacher_forward'],
        teacher_in_step_over_teacher_median=median['teacher_in_step'] / median['teacher_forward'],
    )


def speedup(results: dict, key: str = 'best_s') -> float:
    """The faster peer's time over mmdeit's (> 1: mmdeit is faster)."""
    peer = min(results[n][key] for n in ('mmpretrain', 'timm'))
    return peer / results['mmdeit'][key]


def paired_speedup(results: dict) -> float:
    """The median over rounds of the same ratio within each round (neighbouring calls).

    Less sensitive than best-of-N to a quiet moment that favours one library by chance.
    """
    rounds = zip(*(results[n]['times_s'] for n in ('mmdeit', 'mmpretrain', 'timm')))
    return statistics.median(min(peer) / ours for ours, *peer in rounds)


def print_table(report: dict) -> None:
    m, f = report['machine'], report['flops_per_image']
    print(f'\n{m["cpu"]} | {m["threads"]} threads | torch {m["torch"]} | device {m["device"]}')
    print(
        f'FLOPs/image (multiply and add counted separately): forward {f["forward"] / 1e9:.2f} G, '
        f'train step {f["train_step"] / 1e9:.2f} G; executed by mmdeit: forward '
        f'{f["mmdeit_forward"] / 1e9:.2f} G, train step {f["mmdeit_train_step"] / 1e9:.2f} G '
        '(expected); GFLOP/s and roofline use the executed FLOPs'
    )
    inf = report['inference']
    print(f'matmul peak {inf["mm_peak_gflops"]:.1f} GFLOP/s; load {m["loadavg_start"]}')
    head = f'{"section":<22}{"library":<16}{"best s":>9}{"median s":>10}{"cpu s":>9}'
    head += f'{"img/s":>9}{"GFLOP/s":>9}'
    print(head + f'{"roofline":>10}\n' + '-' * (len(head) + 10))
    for sec in ('inference', 'train'):
        for name, r in report[sec]['results'].items():
            roof = f'{r["roofline_fraction"]:.0%}' if 'roofline_fraction' in r else ''
            label = f'{sec} b={report[sec]["batch"]}'
            print(
                f'{label:<22}{name:<16}{r["best_s"]:>9.3f}{r["median_s"]:>10.3f}'
                f'{r["best_cpu_s"]:>9.3f}{r["img_per_s"]:>9.2f}{r["gflops_per_s"]:>9.1f}{roof:>10}'
            )
    for impl, r in report.get('adamw_step', {}).items():
        print(f'{"AdamW step":<22}{impl:<16}{r["best_s"]:>9.4f}{r["median_s"]:>10.4f}')
    d = report.get('distillation')
    if d:
        for name, r in d['results'].items():
            label = f'distill {d["teacher"]}'
            cpu = f'{r["best_cpu_s"]:>9.3f}' if 'best_cpu_s' in r else ''
            print(f'{label:<22}{name:<16}{r["best_s"]:>9.3f}{r["median_s"]:>10.3f}{cpu}')
    for row in report.get('memory', []):
        print(
            f'{"memory b=" + str(row["batch"]):<22}{row["arch"][:15]:<16}cp={row["with_cp"]!s:<6}'
            f'RSS peak {row["peak_mb"]:.0f} MiB (step +{row["step_increase_mb"]:.0f}), '
            f'tensors {row["tensor_peak_mb"] or float("nan"):.0f} MiB, '
            f'{row["step_s"]:.2f} s'
        )
    print('\ntargets:', json.dumps(report['targets'], indent=1))


@contextlib.contextmanager
def quiet_logs():
    """Keep mmengine's per-parameter ``init_weights`` messages out of the report."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with quiet_logs():
        if args.memory_child is not None:
            print(json.dumps(memory_child(json.loads(args.memory_child))))
            return {}
        return run(args)


def run(args: argparse.Namespace) -> dict:
    """All the measurements; returns (and prints, and writes to ``--out``) the report."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = Device(args.device)
    arch = bm.parse_arch(args.arch)
    models = bm.build_all(arch, bm.model_cfg(args))
    settings = models['mmdeit'].backbone.arch_settings
    flops = bm.deit_flops(
        settings, args.img_size, args.patch_size, args.num_classes, args.drop_path_rate
    )
    probe = torch.randn(2, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        outs = {n: m.eval().predict(probe) for n, m in models.items()}
    report = dict(
        machine=machine_info(dev),
        args=vars(args),
        flops_per_image=flops,
        flop_counter_forward_timm=bm.counted_forward_flops(models['timm'], probe[:1]),
        flop_counter_forward_mmdeit=bm.counted_forward_flops(
            models['mmdeit'], probe[:1], autograd=True
        ),
        parity_max_abs_diff={n: (o - outs['mmdeit']).abs().max().item() for n, o in outs.items()},
    )
    models = {n: m.to(dev.kind) for n, m in models.items()}
    report['inference'] = bench_inference(args, dev, models, flops)
    report['train'] = bench_train(args, dev, models, flops)
    report['adamw_step'] = bench_adamw(args, dev, models['mmdeit'])
    if args.teacher.lower() != 'none':
        report['distillation'] = bench_distill(args, dev, arch, settings['embed_dims'])
    report['memory'] = bench_memory(args, __file__) if args.memory_archs else []
    if args.profile:
        x = torch.randn(args.infer_batch, 3, args.img_size, args.img_size, device=dev.kind)
        ours = models['mmdeit'].eval()

        def infer():
            with torch.inference_mode(), dev.autocast():
                ours.predict(x)

        report['profile_inference'] = profile_summary(dev, infer)
        report['profile_train'] = profile_summary(dev, bench_train_step(args, dev, ours))
    inf, train = report['inference'], report['train']
    values = dict(
        inference_speedup=speedup(inf['results']),
        inference_roofline=inf['results']['mmdeit']['roofline_fraction'],
        train_speedup=speedup(train['results']),
    )
    if 'distillation' in report:
        values['distill'] = report['distillation']['overhead_over_teacher']
    cpu_time = dict(
        inference_speedup=speedup(inf['results'], 'best_cpu_s'),
        train_speedup=speedup(train['results'], 'best_cpu_s'),
    )
    paired = dict(
        inference_speedup=paired_speedup(inf['results']),
        train_speedup=paired_speedup(train['results']),
        distill=report.get('distillation', {}).get('overhead_over_teacher_median'),
    )
    direct = dict(distill=report.get('distillation', {}).get('teacher_in_step_over_teacher_median'))
    report['targets'] = {
        k: dict(
            value=v,
            target=TARGETS[k],
            met=v <= TARGETS[k] if k == 'distill' else v >= TARGETS[k],
            value_from_cpu_time=cpu_time.get(k),
            value_paired_or_median=paired.get(k),
            value_timed_inside_step=direct.get(k),
        )
        for k, v in values.items()
    }
    report['machine']['loadavg_end'] = list(os.getloadavg())
    print_table(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return report


def bench_train_step(args, dev: Device, model: torch.nn.Module) -> Callable:
    x = torch.randn(args.train_batch, 3, args.img_size, args.img_size, device=dev.kind)
    y = torch.randint(0, args.num_classes, (args.train_batch,), device=dev.kind)
    opt = bm.make_adamw(model.parameters(), args.adamw, args.train_batch)
    return bm.make_train_step(model.train(), opt, x, y, dev.autocast)


if __name__ == '__main__':
    main()
