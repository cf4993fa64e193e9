"""Images per second per core of DeiT's training augmentation: mmdeit's three routes next to
timm's and torchvision v2's, on the same generated JPEGs, in one process.

Pipelines (each reads the file and decodes it):

- ``mmdeit reference``: the ``train_pipeline`` of
  ``configs/_base_/datasets/imagenet_bs128_deit_224.py`` with ``TrainPipeline``'s
  ``fast_pipeline=False`` (mmpretrain's transform objects as they are), then ``PackInputs``;
  no normalisation: the data preprocessor normalises the batch on the device;
- ``mmdeit exact``: the same with ``fast_pipeline='exact'`` (as shipped: the reference's
  pixels bit for bit through faster kernels);
- ``mmdeit fast``: the same with ``fast_pipeline=True``;
- ``timm``: ``create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5',
  interpolation='bicubic', re_prob=0.25, re_mode='pixel')`` on ``Image.open(f).convert('RGB')``
  (timm's loader), with its ToTensor and normalisation;
- ``torchvision v2``: ``decode_jpeg`` and v2's RandomResizedCrop (bicubic, antialias),
  horizontal flip, RandAugment(2, 9) (bilinear, no magnitude noise: v2 has neither on
  tensors), ToDtype, Normalize,
  RandomErasing(0.25, value='random').

One thread (torch, OpenCV), interleaved rounds: each round runs every pipeline over all images
in a rotating order; reported: best and median images/s over the rounds. Example::

    python tools/analysis/pipeline_benchmark.py --count 64 --rounds 5
"""

import argparse
import json
import logging
import os.path as osp
import platform
import statistics
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Union

import numpy as np
import torch

try:  # imported as tools.analysis.pipeline_benchmark
    from .imagenet_jpegs import write_imagenet_like_jpegs
    from .pipeline_profile import DEFAULT_CONFIG, build_pipeline, one_thread
except ImportError:  # run as a script: this folder is on sys.path
    from imagenet_jpegs import write_imagenet_like_jpegs
    from pipeline_profile import DEFAULT_CONFIG, build_pipeline, one_thread

logger = logging.getLogger('pipeline_benchmark')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def mmdeit_pipeline(config: str, fast_pipeline: Union[bool, str]) -> Callable[[str], object]:
    transforms = build_pipeline(config, fast_pipeline=fast_pipeline)

    def run(path: str):
        results = dict(img_path=path, gt_label=0)
        for t in transforms:
            results = t(results)
        return results['inputs']

    return run


def timm_pipeline() -> Callable[[str], object]:
    from PIL import Image
    from timm.data import create_transform

    transform = create_transform(
        224, is_training=True, auto_augment='rand-m9-mstd0.5', interpolation='bicubic',
        re_prob=0.25, re_mode='pixel',
    )  # fmt: skip

    def run(path: str):
        with open(path, 'rb') as f:
            return transform(Image.open(f).convert('RGB'))

    return run


def torchvision_pipeline() -> Callable[[str], object]:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import InterpolationMode, v2

    transform = v2.Compose([
        v2.RandomResizedCrop(224, interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        # bilinear: v2 has no bicubic affine for tensors
        v2.RandAugment(num_ops=2, magnitude=9, interpolation=InterpolationMode.BILINEAR),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        v2.RandomErasing(p=0.25, value='random'),
    ])  # fmt: skip

    def run(path: str):
        return transform(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))

    return run


def cpu_model() -> str:
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith('Model name:'):
                return line.split(':', 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or 'unknown'


def benchmark(pipelines: Dict[str, Callable], paths: List[str], rounds: int, seed: int) -> dict:
    """Interleaved rounds; ``{name: {'best': img/s, 'median': img/s, 'rounds': [...]}}``."""
    names = list(pipelines)
    for name in names:  # untimed warm-up: imports, caches, first-call costs
        for path in paths[:4]:
            pipelines[name](path)
    rates = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            np.random.seed(seed + r)
            torch.manual_seed(seed + r)
            start = time.perf_counter()
            for path in paths:
                pipelines[name](path)
            rates[name].append(len(paths) / (time.perf_counter() - start))
    return {n: dict(best=max(v), median=statistics.median(v), rounds=v) for n, v in rates.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=DEFAULT_CONFIG)
    p.add_argument('--count', type=int, default=64, help='generated ImageNet-like JPEGs')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-peers', action='store_true', help='mmdeit only (no timm/torchvision)')
    p.add_argument('--out', help='write the report as JSON here')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    one_thread()
    pipelines = {
        'mmdeit reference': mmdeit_pipeline(args.config, False),
        'mmdeit exact': mmdeit_pipeline(args.config, 'exact'),
        'mmdeit fast': mmdeit_pipeline(args.config, True),
    }
    if not args.no_peers:
        pipelines.update(timm=timm_pipeline(), **{'torchvision v2': torchvision_pipeline()})
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_imagenet_like_jpegs(tmp, args.count, args.seed)
        results = benchmark(pipelines, paths, args.rounds, args.seed)
    report = dict(cpu=cpu_model(), threads=1, images=args.count, rounds=args.rounds,
                  pipelines=results)  # fmt: skip
    ref = results.get('timm', results['mmdeit reference'])['best']
    lines = [f'{report["cpu"]}, one thread, {args.count} JPEGs, {args.rounds} rounds',
             f'{"pipeline":<18} {"best img/s":>10} {"median":>8} {"vs timm":>8}']  # fmt: skip
    for name, r in results.items():
        lines.append(f'{name:<18} {r["best"]:>10.1f} {r["median"]:>8.1f} {r["best"] / ref:>7.2f}x')
    logger.info('\n'.join(lines))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=2)
        logger.info('report written to %s', osp.abspath(args.out))


if __name__ == '__main__':
    main()
