"""One GPU check for when a device is lent (issue 18): benchmark, ``--amp`` training, parity.

It runs, each step a subprocess with its own time limit and log (on an H200, steps 1, 2 and 4
took 3 min 47 s; step 3 was added after and compiles six models more):

1. the per-device parity tests with ``pytest -k cuda`` (fp32 against mmpretrain to 1e-5
   without TF32, fast == reference with stochastic depth, bf16 within bf16 of fp32): first, as
   they say whether the numbers after them mean anything;
2. ``benchmark.py --device cuda`` in bf16 (autocast, flash SDPA only, fused AdamW) at batch 8
   (training 64) with the profile, the memory of a step and the compiled peers (``torch.compile``
   default and ``reduce-overhead``), again at batch 256 (training 128), then in fp32;
3. ``launch_profile.py``: host time against device time of a bf16 batch-8 call per library,
   eager and compiled (default, CUDA graphs), with the kernels per call; then of an eager
   training step at batch 64 (``--train``);
4. ``tools/train.py configs/deit/deit-small_8xb128_in1k.py --amp`` for ``--iters`` iterations
   on a generated ImageNet-layout folder of random JPEGs (the recipe's pipeline, batch
   ``--batch``).

Everything goes under ``--out`` (default ``$OUT``, else ``work_dirs/gpu_check``): one log per
step, the benchmark JSON reports, the training work dir and ``gpu_check.json`` (each step's
command, exit status and seconds, and the training's loss and time per iteration).
``--device cpu --quick`` is the dry run the tests use: a tiny arch, 2 iterations, the CPU
parity tests. Example::

    python tools/analysis/gpu_check.py            # on the GPU machine
    python tools/analysis/gpu_check.py --device cpu --quick --out /tmp/check
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[2]
STEPS = ('bench', 'launch', 'train', 'tests')
RECIPE = REPO / 'configs' / 'deit' / 'deit-small_8xb128_in1k.py'
TINY = json.dumps(dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64))
logger = logging.getLogger('gpu_check')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line; ``--out`` defaults to ``$OUT``, else ``work_dirs/gpu_check``."""
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    p.add_argument('--quick', action='store_true', help='tiny sizes: the dry run')
    p.add_argument('--out', default=os.environ.get('OUT') or 'work_dirs/gpu_check')
    p.add_argument('--steps', nargs='+', default=list(STEPS), choices=STEPS)
    p.add_argument('--iters', type=int, default=None, help='training iterations (50; quick 2)')
    p.add_argument('--batch', type=int, default=None, help='training batch (128; quick 2)')
    p.add_argument('--images', type=int, default=None, help='generated train images')
    p.add_argument('--step-timeout', type=int, default=240, help='seconds per step')
    args = p.parse_args(argv)
    if args.iters is None:
        args.iters = 2 if args.quick else 50
    if args.batch is None:
        args.batch = 2 if args.quick else 128
    if args.images is None:
        args.images = min(args.batch * args.iters, 2 * args.batch if args.quick else 1280)
    for name in ('iters', 'batch', 'images', 'step_timeout'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    if args.images < args.batch:
        raise ValueError(f'--images ({args.images}) must be >= --batch ({args.batch})')
    return args


def bench_commands(args, out: Path) -> List[List[str]]:
    """The benchmark runs: bf16 at issue 26's batches (flash SDPA, profile, memory; on a GPU
    also the compiled peers, default and CUDA graphs), bf16 at throughput batches, then fp32."""
    tool = [sys.executable, str(REPO / 'tools' / 'analysis' / 'benchmark.py')]
    common = ['--device', args.device]
    if args.quick:
        common += ['--arch', TINY, '--img-size', '32', '--patch-size', '8', '--num-classes', '10']
        common += ['--infer-batch', '2', '--train-batch', '2', '--rounds', '1']
        common += ['--train-rounds', '1', '--teacher', 'test_resnet']
        small, large = [], ['--infer-batch', '4', '--train-batch', '4']
    else:
        common += ['--arch', 'deit-small', '--rounds', '30', '--train-rounds', '10']
        common += ['--warmup', '3', '--teacher-channels-last']
        small = ['--infer-batch', '8', '--train-batch', '64']
        large = ['--infer-batch', '256', '--train-batch', '128', '--rounds', '10']
        large += ['--train-rounds', '5']
    bf16 = [*tool, *common, '--dtype', 'bf16', '--sdpa', 'flash']
    small = bf16 + small + ['--profile']
    if args.device == 'cuda':
        small += ['--compile', 'default', 'reduce-overhead']
    if not args.quick:
        small += ['--memory-archs', 'deit-tiny', 'deit-small', '--memory-jobs', '2']
    fp32 = [*tool, *common, '--dtype', 'fp32', '--no-ablation']
    return [
        small + ['--out', str(out / 'benchmark_bf16.json')],
        bf16 + large + ['--teacher', 'none', '--out', str(out / 'benchmark_bf16_large.json')],
        fp32 + ['--out', str(out / 'benchmark_fp32.json')],
    ]


def write_imagenet(root: Path, num_train: int, num_val: int, size=(256, 256)) -> Path:
    """``root/{train/<wnid>/*.JPEG, val/*.JPEG, meta/{train,val}.txt}`` of random images, two
    classes (the layout of ``tests/journeys/conftest.py``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    wnids = ('n01440764', 'n01443537')
    (root / 'meta').mkdir(parents=True, exist_ok=True)
    (root / 'val').mkdir(exist_ok=True)
    lines = dict(train=[], val=[])
    for i in range(num_train + num_val):
        split, label = ('train' if i < num_train else 'val'), i % 2
        if split == 'train':
            name = f'{wnids[label]}/{wnids[label]}_{i}.JPEG'
            (root / 'train' / wnids[label]).mkdir(parents=True, exist_ok=True)
        else:
            name = f'ILSVRC2012_val_{i:08d}.JPEG'
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / split / name, format='JPEG')
        lines[split].append(f'{name} {label}')
    for split, split_lines in lines.items():
        (root / 'meta' / f'{split}.txt').write_text('\n'.join(split_lines) + '\n')
    return root


def recipe_config(
    path: Path,
    data_root: Path,
    *,
    batch: int,
    iters: int,
    images: int,
    workers: int,
    arch: str = 'deit-small',
    validate: bool = True,
) -> Path:
    """Write at ``path`` a config inheriting the DeiT-S recipe on the generated data: at least
    ``iters`` iterations of ``batch``, validated after the last epoch if ``validate``."""
    epochs = max(1, -(-iters * batch // images))  # ceil: at least iters
    loader = dict(
        batch_size=batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        dataset=dict(data_root=str(data_root)),
    )
    lines = [
        f'_base_ = [{str(RECIPE)!r}]',
        f'train_dataloader = {loader!r}',
        f'val_dataloader = {dict(loader, batch_size=min(batch, 32))!r}',
        f'test_dataloader = {dict(loader, batch_size=min(batch, 32))!r}',
        f'train_cfg = dict(max_epochs={epochs}, val_interval={epochs if validate else epochs + 1})',
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=-1))',
        'randomness = dict(seed=0)',
    ]
    if arch == 'deit-tiny':  # the recipe's 224 px pipeline: seconds per iteration on a CPU
        lines.append("model = dict(backbone=dict(arch='deit-tiny'), head=dict(in_channels=192))")
    path.write_text('\n'.join(lines) + '\n')
    return path


def train_config(args, out: Path, data_root: Path) -> Path:
    """The recipe on the generated data for ``--iters`` iterations (DeiT-Ti with ``--quick``)."""
    return recipe_config(
        out / 'deit-small_gpu_check.py',
        data_root,
        batch=args.batch,
        iters=args.iters,
        images=args.images,
        workers=2 if args.quick else 8,
        arch='deit-tiny' if args.quick else 'deit-small',
    )


def train_command(args, out: Path) -> List[str]:
    data_root = write_imagenet(
        out / 'imagenet',
        args.images,
        8 if args.quick else 64,
        (40, 40) if args.quick else (256, 256),
    )
    config = train_config(args, out, data_root)
    cmd = [sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--amp']
    return cmd + ['--work-dir', str(out / 'train')]


def scalar_rows(work_dir: Path) -> Optional[List[dict]]:
    """The logged rows of a ``tools/train.py`` work dir (its newest ``*/vis_data/scalars.json``);
    None if it has none."""
    found = sorted(Path(work_dir).glob('*/vis_data/scalars.json'))
    if not found:
        return None
    return [json.loads(line) for line in found[-1].read_text().splitlines() if line.strip()]


def train_summary(work_dir: Path) -> dict:
    """Loss and seconds per iteration from the run's ``scalars.json``."""
    rows = scalar_rows(work_dir)
    if rows is None:
        return dict(iterations=0)
    train = [r for r in rows if 'loss' in r]
    times = [r['time'] for r in train[1:] if 'time' in r]  # the first iteration compiles, warms
    return dict(
        iterations=len(train),
        first_loss=train[0]['loss'] if train else None,
        last_loss=train[-1]['loss'] if train else None,
        median_iter_s=statistics.median(times) if times else None,
        memory_mb=max((r.get('memory', 0) for r in train), default=None),
        val=[r for r in rows if any(k.startswith('accuracy') for k in r)],
    )


def launch_commands(args, out: Path) -> List[List[str]]:
    """``launch_profile.py`` in bf16: a batch-8 call (quick: the tiny arch at batch 2, eager
    only on the CPU), compiled in the default mode and, on a GPU, with CUDA graphs; then eager
    training steps (``--train``) at batch 64 (quick: 2)."""
    cmd = [sys.executable, str(REPO / 'tools' / 'analysis' / 'launch_profile.py')]
    cmd += ['--device', args.device, '--dtype', 'bf16']
    if args.quick:
        cmd += ['--arch', TINY, '--img-size', '32', '--patch-size', '8', '--num-classes', '10']
        cmd += ['--rounds', '2', '--profiled-calls', '1']
        infer, train = ['--batch', '2'], ['--batch', '2']
    else:
        cmd += ['--arch', 'deit-small']
        infer = ['--batch', '8', '--rounds', '30', '--compile', 'default']
        infer += ['reduce-overhead'] * (args.device == 'cuda')
        train = ['--batch', '64', '--rounds', '10', '--profiled-calls', '3']
    return [
        cmd + infer + ['--out', str(out / 'launch_profile.json')],
        cmd + train + ['--train', '--out', str(out / 'launch_profile_train.json')],
    ]


def tests_command(args) -> List[str]:
    """The per-device parity tests, selected by the device's name."""
    files = [
        'tests/models/backbones/test_bf16_fast_path.py',
        'tests/models/backbones/test_kept_casts.py',
        'tests/models/utils/test_drop_path_device.py',
    ]
    return [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files, '-k', 'device']


def run_step(name: str, cmd: List[str], out: Path, timeout: int, cwd: Path = REPO) -> dict:
    """Run ``cmd`` with its output in ``out/<name>.log``; its status and seconds."""
    log = out / f'{name}.log'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    start = time.perf_counter()
    with log.open('w') as f:
        try:
            rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = 124
    seconds = time.perf_counter() - start
    logger.info('%s: exit %d in %.1f s (%s)', name, rc, seconds, log)
    return dict(name=name, cmd=cmd, returncode=rc, seconds=seconds, log=str(log))


def main(argv: Optional[List[str]] = None) -> dict:
    """Run the chosen steps; write and return the summary."""
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(args=vars(args), steps=[])
    if 'tests' in args.steps:
        cmd = tests_command(args)
        if args.device == 'cuda':
            cmd[-1] = 'device and cuda'
        summary['steps'].append(run_step('tests', cmd, out, args.step_timeout))
    if 'bench' in args.steps:
        for i, cmd in enumerate(bench_commands(args, out)):
            summary['steps'].append(run_step(f'bench_{i}', cmd, out, args.step_timeout))
    if 'launch' in args.steps:
        for name, cmd in zip(('launch', 'launch_train'), launch_commands(args, out), strict=True):
            summary['steps'].append(run_step(name, cmd, out, args.step_timeout))
    if 'train' in args.steps:
        step = run_step('train', train_command(args, out), out, args.step_timeout)
        step['summary'] = train_summary(out / 'train')
        summary['steps'].append(step)
    summary['ok'] = all(s['returncode'] == 0 for s in summary['steps'])
    (out / 'gpu_check.json').write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == '__main__':
    sys.exit(0 if main()['ok'] else 1)
