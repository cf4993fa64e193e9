"""``tools/train.py --amp`` against fp32: seconds per iteration of the DeiT-S recipe, as run.

Each run is ``tools/train.py`` on a config inheriting ``configs/deit/deit-small_8xb128_in1k.py``
(its model, pipeline, fused AdamW and stochastic depth) with a generated ImageNet-layout folder of
random JPEGs, ``--batch`` images per iteration, ``--iters`` iterations; with ``--amp`` that is
bf16 autocast on a CPU (fp16 with loss scaling on a GPU). The runs alternate fp32 / amp
``--repeats`` times, in separate processes. From each run's ``scalars.json`` the median of
mmengine's per-iteration ``time`` (data loading included) and ``data_time`` over the iterations
after the first ``--skip``; the report gives each run, the median over the runs of each
precision and their ratio. Example::

    python tools/analysis/amp_speed.py --batch 64 --iters 8 --out work_dirs/amp_speed
"""

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import List, Optional

try:  # imported as tools.analysis.amp_speed
    from . import gpu_check
except ImportError:  # run as a script: this folder is on sys.path
    import gpu_check

logger = logging.getLogger('amp_speed')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=64, help='images per iteration')
    p.add_argument('--iters', type=int, default=8, help='iterations per run')
    p.add_argument('--skip', type=int, default=2, help='first iterations left out (warm-up)')
    p.add_argument('--repeats', type=int, default=2, help='fp32/amp run pairs, alternating')
    p.add_argument('--workers', type=int, default=2, help='dataloader workers')
    p.add_argument('--arch', default='deit-small', choices=['deit-tiny', 'deit-small'])
    p.add_argument('--img-size', type=int, default=256, help='side of the generated JPEGs')
    p.add_argument('--step-timeout', type=int, default=900, help='seconds per run')
    p.add_argument('--out', default='work_dirs/amp_speed')
    args = p.parse_args(argv)
    for name in ('batch', 'iters', 'repeats', 'step_timeout', 'img_size'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if not 0 <= args.skip < args.iters:
        raise ValueError(f'--skip must be in [0, --iters), got {args.skip}')
    if args.workers < 0:
        raise ValueError(f'--workers must be >= 0, got {args.workers}')
    return args


def config(args: argparse.Namespace, out: Path, data_root: Path) -> Path:
    """The recipe on the generated data for ``--iters`` iterations; no validation or checkpoint."""
    return gpu_check.recipe_config(
        out / 'amp_speed_config.py',
        data_root,
        batch=args.batch,
        iters=args.iters,
        images=2 * args.batch,  # as main() generates
        workers=args.workers,
        arch=args.arch,
        validate=False,
    )


def iteration_times(work_dir: Path, skip: int) -> dict:
    """Medians of ``time`` and ``data_time`` after ``skip`` iterations, from ``scalars.json``."""
    rows = gpu_check.scalar_rows(work_dir) or []
    train = [r for r in rows if 'loss' in r and 'time' in r][skip:]
    if not train:
        return dict(iterations=0)
    return dict(
        iterations=len(train) + skip,
        median_iter_s=statistics.median(r['time'] for r in train),
        median_data_s=statistics.median(r.get('data_time', 0.0) for r in train),
        losses=[r['loss'] for r in train],
    )


def main(argv: Optional[List[str]] = None) -> dict:
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = gpu_check.write_imagenet(out / 'imagenet', 2 * args.batch, 2, (args.img_size,) * 2)
    cfg = config(args, out, data)
    runs = []
    for repeat in range(args.repeats):
        for amp in (False, True):
            name = f'{"amp" if amp else "fp32"}_{repeat}'
            cmd = [sys.executable, str(gpu_check.REPO / 'tools' / 'train.py'), str(cfg)]
            cmd += ['--work-dir', str(out / name)] + ['--amp'] * amp
            step = gpu_check.run_step(name, cmd, out, args.step_timeout, cwd=out)
            step.update(amp=amp, **iteration_times(out / name, args.skip))
            logger.info('%s: %s s/iter', name, step.get('median_iter_s'))
            runs.append(step)
    report = dict(args=vars(args), runs=runs)
    for key, amp in (('fp32', False), ('amp', True)):
        times = [r['median_iter_s'] for r in runs if r['amp'] == amp and r.get('median_iter_s')]
        report[f'{key}_iter_s'] = statistics.median(times) if times else None
    if report['fp32_iter_s'] and report['amp_iter_s']:
        report['speedup'] = report['fp32_iter_s'] / report['amp_iter_s']
    report['ok'] = all(r['returncode'] == 0 and r['iterations'] >= args.iters for r in runs)
    (out / 'amp_speed.json').write_text(json.dumps(report, indent=1))
    print(
        f'fp32 {report["fp32_iter_s"]} s/iter, --amp {report["amp_iter_s"]} s/iter, '
        f'speed-up {report.get("speedup")}'
    )
    return report


if __name__ == '__main__':
    sys.exit(0 if main()['ok'] else 1)
