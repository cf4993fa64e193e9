"""Where a training pipeline's time goes, per stage, on generated ImageNet-like JPEGs.

Builds the ``train_pipeline`` of a config (default: the shipped DeiT recipe's), runs it over
JPEGs from :mod:`imagenet_jpegs` in one process on one thread, and times every transform's
``transform`` call, RandAugment's ops each on their own (an op drawn but disabled by its
``prob`` counts as a call too). Reported per stage: calls, total ms, ms per image and share.
Example::

    python tools/analysis/pipeline_profile.py --count 200 [--route reference|exact|fast]
"""

import argparse
import contextlib
import logging
import os
import os.path as osp
import tempfile
import time
from collections import defaultdict
from typing import Dict, List, Union

import cv2
import numpy as np
import torch

try:  # imported as tools.analysis.pipeline_profile
    from .imagenet_jpegs import write_imagenet_like_jpegs
except ImportError:  # run as a script: this folder is on sys.path
    from imagenet_jpegs import write_imagenet_like_jpegs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(REPO, 'configs', '_base_', 'datasets', 'imagenet_bs128_deit_224.py')
logger = logging.getLogger('pipeline_profile')


def one_thread() -> None:
    """One thread for torch and OpenCV: a data worker's share of a core."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _timed(fn, name: str, totals: Dict[str, list]):
    """``fn`` with each call's seconds appended to ``totals[name]``."""

    def call(*args):
        start = time.perf_counter()
        out = fn(*args)
        totals[name].append(time.perf_counter() - start)
        return out

    return call


def _name(t, parent: str) -> str:
    direction = getattr(t, 'direction', None)
    name = type(t).__name__ + (f'.{direction}' if isinstance(direction, str) else '')
    return f'{parent}.{name}' if parent == 'RandAugment' else name


def instrument(transforms: list, parent: str = '', totals=None, children=None) -> tuple:
    """Wrap the ``transform`` of every transform, and of the transforms inside one
    (``TrainPipeline``'s, RandAugment's ops), with a timer.

    Args:
        transforms: Built transforms (mmcv ``BaseTransform`` objects), changed in place.

    Returns:
        ``({stage name: [seconds per call]}, {container name: [its children's names]})``,
        filled as the transforms run.
    """
    totals = defaultdict(list) if totals is None else totals
    children = defaultdict(set) if children is None else children
    for t in transforms:
        name = _name(t, parent)
        inner = getattr(t, 'transforms', None)
        if isinstance(inner, list):
            instrument(inner, name, totals, children)
            children[name].update(_name(c, name) for c in inner)
        t.transform = _timed(t.transform, name, totals)
    return totals, children


@contextlib.contextmanager
def fast_route_timed(transforms: list, totals: Dict[str, list]):
    """Time the exact and fast routes' own steps under the stage names of what they replace:
    the load, the crop, the flip and RandAugment (whose objects' ``transform`` those routes do
    not call) and each RandAugment point operation's lookup table. Restores everything on
    exit."""
    from mmdeit.datasets.transforms import fast_randaugment as fra
    from mmdeit.datasets.transforms import train_pipeline as tp

    steps = dict(
        load_image='LoadImageFromFile',
        random_resized_crop='RandomResizedCrop',
        flip='RandomFlip',
        fast_randaugment='RandAugment',
    )
    saved = {step: getattr(tp, step) for step in steps}, dict(fra.KERNELS)
    names = dict(steps)
    for t in transforms:
        for inner in getattr(t, 'transforms', []):
            if type(inner).__name__ == 'RandomFlip':
                names['flip'] = _name(inner, 'TrainPipeline')
            for op in getattr(inner, 'transforms', []):  # RandAugment's ops
                names[type(op)] = _name(op, 'RandAugment')
    for step, fn in saved[0].items():
        setattr(tp, step, _timed(fn, names[step], totals))
    for op_type, kernel in saved[1].items():
        fra.KERNELS[op_type] = _timed(kernel, names.get(op_type, op_type.__name__), totals)
    try:
        yield
    finally:
        for step, fn in saved[0].items():
            setattr(tp, step, fn)
        fra.KERNELS.update(saved[1])


#: ``--route`` names and the ``TrainPipeline.fast_pipeline`` value each stands for.
ROUTES = {'reference': False, 'exact': 'exact', 'fast': True}


def build_pipeline(
    config: str, fast_pipeline: Union[bool, str, None] = None, key: str = 'train_pipeline'
) -> list:
    """The transforms of ``config``'s ``key`` (scope mmdeit), built, with every
    ``TrainPipeline``'s ``fast_pipeline`` set to ``fast_pipeline`` (None: as configured)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmdeit  # noqa: F401  (registers modules)
    from mmdeit.registry import TRANSFORMS

    init_default_scope('mmdeit')
    cfgs = Config.fromfile(config)[key]
    for t in cfgs:
        if t['type'] in ('TrainPipeline', 'mmdeit.TrainPipeline') and fast_pipeline is not None:
            t['fast_pipeline'] = fast_pipeline
    return [TRANSFORMS.build(t) for t in cfgs]


def profile(transforms: list, paths: List[str], seed: int = 0) -> List[dict]:
    """Run ``transforms`` once over ``paths`` (numpy seeded) and time each stage.

    Returns:
        Rows ``{stage, calls, total_ms, ms_per_image, share}``, slowest first. A container's
        own row (RandAugment: the draw of its ops; TrainPipeline: with ``fast_pipeline=True``
        the fused decode and crop) is its time less its children's.
    """
    totals, children = instrument(transforms)
    np.random.seed(seed)
    with fast_route_timed(transforms, totals):
        start = time.perf_counter()
        for path in paths:
            results = dict(img_path=path, gt_label=0)
            for t in transforms:
                results = t(results)
        wall = time.perf_counter() - start
    seconds = {name: sum(v) for name, v in totals.items()}
    raw = dict(seconds)
    for container, names in children.items():  # a container's own time, less its children's
        seconds[container] = raw.get(container, 0.0) - sum(raw.get(n, 0.0) for n in names)
    rows = [
        dict(stage=name, calls=len(totals[name]), total_ms=1e3 * s,
             ms_per_image=1e3 * s / len(paths), share=s / wall)
        for name, s in seconds.items()
    ]  # fmt: skip
    rows.sort(key=lambda r: -r['total_ms'])
    rows.append(dict(stage='(whole pipeline)', calls=len(paths), total_ms=1e3 * wall,
                     ms_per_image=1e3 * wall / len(paths), share=1.0))  # fmt: skip
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = [f'{"stage":<34} {"calls":>6} {"ms/image":>9} {"share":>6}']
    for r in rows:
        lines.append(
            f'{r["stage"]:<34} {r["calls"]:>6} {r["ms_per_image"]:>9.3f} {100 * r["share"]:>5.1f}%'
        )
    return '\n'.join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=DEFAULT_CONFIG)
    p.add_argument('--count', type=int, default=200, help='generated JPEGs')
    p.add_argument('--images', help='a folder of JPEGs to use instead of generated ones')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--route',
        choices=list(ROUTES),
        help="the TrainPipeline's fast_pipeline: reference (False: mmpretrain's objects), exact "
        "('exact') or fast (True); default: as the config sets it",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    one_thread()
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            names = sorted(os.listdir(args.images))
            paths = [osp.join(args.images, n) for n in names]
        else:
            paths = write_imagenet_like_jpegs(tmp, args.count, args.seed)
        route = None if args.route is None else ROUTES[args.route]
        transforms = build_pipeline(args.config, fast_pipeline=route)
        logger.info(format_rows(profile(transforms, paths, args.seed)))


if __name__ == '__main__':
    main()
