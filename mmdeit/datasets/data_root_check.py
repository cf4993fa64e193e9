"""Fail early, with one clear message, when a config's dataset folder is not there."""

import os.path as osp
from typing import Iterator, Optional, Tuple

from mmengine.config import Config

IMAGENET_LAYOUT = """expected layout (as mmpretrain's ImageNet dataset):
  {root}/
  ├── train/<wnid>/<image>.JPEG      one folder per class (or train/ + meta/train.txt)
  ├── val/<image>.JPEG               with meta/val.txt ("<file> <label>" per line),
  │                                  or val/<wnid>/<image>.JPEG
  └── meta/                          optional: train.txt, val.txt
Download ImageNet-1k yourself (it cannot be fetched automatically) and link it there, or set
the path with --cfg-options train_dataloader.dataset.data_root=... (and val_/test_ alike)."""

_IMAGENET_TYPES = ('ImageNet', 'ImageNet21k', 'mmpretrain.ImageNet')


def _datasets(cfg: Config) -> Iterator[Tuple[str, dict]]:
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader_cfg = cfg.get(loader)
        dataset = loader_cfg.get('dataset') if loader_cfg else None
        while isinstance(dataset, dict):
            yield loader, dataset
            dataset = dataset.get('dataset')  # dataset wrappers (RepeatDataset, ...)


def _problem(dataset: dict) -> Optional[str]:
    root = dataset.get('data_root')
    if not root:
        return None
    if not osp.isdir(root):
        return f'data_root {root!r} does not exist'
    if dataset.get('type') in _IMAGENET_TYPES:
        split = dataset.get('split') or ''
        prefix = dataset.get('data_prefix') or split
        if isinstance(prefix, dict):
            prefix = prefix.get('img_path', '')
        folder = osp.join(root, prefix)
        ann = dataset.get('ann_file') or ''
        if prefix and not osp.isdir(folder):
            return f'image folder {folder!r} does not exist'
        if ann and not osp.isfile(osp.join(root, ann)) and not osp.isfile(ann):
            return f'ann_file {ann!r} does not exist under {root!r}'
    return None


def check_data_roots(cfg: Config) -> None:
    """Check that every dataloader's ``data_root`` (and ImageNet split folder) exists.

    Args:
        cfg: A full runner config.

    Raises:
        FileNotFoundError: naming the dataloader, the path it looked at, and for ImageNet
            the expected folder layout.
    """
    for loader, dataset in _datasets(cfg):
        problem = _problem(dataset)
        if problem:
            msg = f'{loader}.dataset: {problem} (looked in {osp.abspath(dataset["data_root"])}).'
            if dataset.get('type') in _IMAGENET_TYPES:
                msg += '\n' + IMAGENET_LAYOUT.format(root=dataset['data_root'])
            raise FileNotFoundError(msg)
