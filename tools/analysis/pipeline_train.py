"""The data pipeline's share of a training step, end to end, as a user runs it.

Writes an ImageNet-layout folder of generated ImageNet-like JPEGs (:mod:`imagenet_jpegs`),
a user config (``_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'``: the shipped DeiT-S
recipe, its pipeline, RandAugment, Mixup/CutMix, AdamW) in a folder outside the checkout,
and runs ``tools/train.py`` on it as a subprocess with data workers, once per value of the
train pipeline's ``fast_pipeline``: False (mmpretrain's objects), 'exact' (as shipped) and
True. Reported per run, from mmengine's
own log (``data_time``: the time the loop waited for the batch; ``time``: the whole
iteration), over the iterations after the first ``--skip`` (worker start-up):
mean ``data_time``, mean ``time`` and the share ``data_time / time``.

``--tiny`` swaps the model for a 2-layer, 64-wide DeiT: a stand-in for a fast accelerator,
where the step is short and the workers set the pace. Example::

    python tools/analysis/pipeline_train.py --iters 12 --batch-size 32 --workers 2
    python tools/analysis/pipeline_train.py --iters 24 --batch-size 32 --workers 2 --tiny
"""

import argparse
import glob
import json
import logging
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Union

import numpy as np
from PIL import Image

try:  # imported as tools.analysis.pipeline_train
    from .imagenet_jpegs import imagenet_like_sizes, photo_like
except ImportError:  # run as a script: this folder is on sys.path
    from imagenet_jpegs import imagenet_like_sizes, photo_like

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
logger = logging.getLogger('pipeline_train')
SWITCH = 'train_dataloader.dataset.pipeline.0.fast_pipeline'
TINY = """
tiny = dict(_delete_=True, embed_dims=64, num_layers=2, num_heads=2, feedforward_channels=128)
model = dict(backbone=dict(arch=tiny), head=dict(in_channels=64))
"""


def write_dataset(root: str, count: int, classes: int = 4, seed: int = 0) -> None:
    """``root/train/<class>/*.JPEG`` and ``root/meta/train.txt``: ``count`` ImageNet-like
    JPEGs (sizes and qualities as :func:`imagenet_like_sizes` draws them)."""
    rng = np.random.default_rng(seed + 1)
    lines = []
    for i, (w, h) in enumerate(imagenet_like_sizes(count, seed)):
        wnid = f'n{i % classes:08d}'
        os.makedirs(osp.join(root, 'train', wnid), exist_ok=True)
        name = f'{wnid}/{wnid}_{i}.JPEG'
        quality = int(rng.integers(75, 96))
        Image.fromarray(photo_like(w, h, rng)).save(osp.join(root, 'train', name), quality=quality)
        lines.append(f'{name} {i % classes}')
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    with open(osp.join(root, 'meta', 'train.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def user_config(folder: str, data_root: str, batch: int, workers: int, tiny: bool) -> str:
    body = f"""_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'
train_dataloader = dict(batch_size={batch}, num_workers={workers}, persistent_workers=True,
                        dataset=dict(data_root={data_root!r}))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=-1, save_last=False))
randomness = dict(seed=0)
"""
    path = osp.join(folder, 'my_deit_small.py')
    with open(path, 'w') as f:
        f.write(body + (TINY if tiny else ''))
    return path


def read_scalars(work_dir: str) -> List[dict]:
    """mmengine's per-iteration log records (``vis_data/<timestamp>.json``)."""
    files = glob.glob(osp.join(work_dir, '*', 'vis_data', '*.json'))
    files = [f for f in files if not f.endswith('scalars.json')]
    if not files:
        raise RuntimeError(f'no mmengine log under {work_dir}')
    with open(sorted(files)[-1]) as f:
        return [json.loads(line) for line in f if '"data_time"' in line]


def run(
    config: str, folder: str, fast: Union[bool, str], log_path: str, skip: int
) -> Dict[str, float]:
    work_dir = osp.join(folder, f'work_fast_{fast}')
    args = [sys.executable, osp.join(REPO, 'tools', 'train.py'), config, '--work-dir', work_dir,
            '--cfg-options', f'{SWITCH}={fast}']  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    with open(log_path, 'w') as log:
        proc = subprocess.run(args, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        raise RuntimeError(f'tools/train.py exited {proc.returncode}; its output: {log_path}')
    records = read_scalars(work_dir)[skip:]
    if not records:
        raise RuntimeError(f'fewer than {skip + 1} logged iterations; raise --iters')
    data = statistics.mean(r['data_time'] for r in records)
    step = statistics.mean(r['time'] for r in records)
    return dict(iters=len(records), data_time=data, time=step, share=data / step)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=12, help='iterations per run')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--skip', type=int, default=2, help='first iterations left out (start-up)')
    p.add_argument('--tiny', action='store_true', help='a 2-layer 64-wide model (short step)')
    p.add_argument('--out', help='write the report as JSON here')
    p.add_argument('--logs', default='.', help="folder for the runs' full output")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        data_root = osp.join(folder, 'data', 'imagenet')
        write_dataset(data_root, args.iters * args.batch_size)
        config = user_config(folder, data_root, args.batch_size, args.workers, args.tiny)
        for fast in (False, 'exact', True):
            log_path = osp.abspath(osp.join(args.logs, f'pipeline_train_fast_{fast}.log'))
            logger.info(f'training, fast_pipeline={fast} ({args.iters} iterations) ...')
            rows[f'fast_pipeline={fast}'] = row = run(config, folder, fast, log_path, args.skip)
            logger.info(f'  data_time {row["data_time"]:.3f} s of {row["time"]:.3f} s per '
                        f'iteration ({100 * row["share"]:.1f} %), {row["iters"]} iterations; '
                        f'full output: {log_path}')  # fmt: skip
    report = dict(vars(args), model='tiny' if args.tiny else 'deit-small', runs=rows)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
