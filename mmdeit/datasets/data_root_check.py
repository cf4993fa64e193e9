"""Fail early, with one clear message, when a config's dataset folder is not there."""

import os
import os.path as osp
from typing import Iterator, Optional, Sequence, Tuple

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
_FOLDER_TYPES = ('CustomDataset', 'mmpretrain.CustomDataset', *_IMAGENET_TYPES)
#: mmpretrain ``CustomDataset``'s default ``extensions``.
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif')


def _datasets(cfg: Config) -> Iterator[Tuple[str, dict]]:
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader_cfg = cfg.get(loader)
        dataset = loader_cfg.get('dataset') if loader_cfg else None
        while isinstance(dataset, dict):
            yield loader, dataset
            dataset = dataset.get('dataset')  # dataset wrappers (RepeatDataset, ...)


def _has_image(folder: str, extensions: Sequence[str], in_subfolders: bool) -> bool:
    """Whether ``folder`` (only its subfolders if ``in_subfolders``) holds an image file.

    Stops at the first one found, so a full ImageNet folder costs a few directory reads.
    """
    extensions = tuple(e.lower() for e in extensions)
    for dirpath, _, filenames in os.walk(folder, followlinks=True):
        if in_subfolders and dirpath == folder:
            continue
        if any(name.lower().endswith(extensions) for name in filenames):
            return True
    return False


def _empty_folder_problem(dataset: dict, folder: str) -> Optional[str]:
    """The problem of a folder-scanning dataset (no ``ann_file``) whose folder has no image."""
    if dataset.get('type') not in _FOLDER_TYPES or dataset.get('ann_file'):
        return None
    if not osp.isdir(folder):
        return f'image folder {folder!r} does not exist'
    extensions = dataset.get('extensions') or IMG_EXTENSIONS
    # mmpretrain's ImageNet reads its unlabelled 'test' split from a flat folder.
    with_label = dataset.get('with_label', dataset.get('split') != 'test')
    if _has_image(folder, extensions, in_subfolders=with_label):
        return None
    where = f'{folder}/<class>/<image>' if with_label else f'{folder}/<image>'
    return (
        f'image folder {folder!r} holds no image (looked for {where} with extensions '
        f'{tuple(extensions)})'
    )


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
        if not ann and not osp.isfile(osp.join(root, 'meta', f'{split}.txt')):
            return _empty_folder_problem(dataset, osp.normpath(folder))
        return None
    prefix = dataset.get('data_prefix') or ''
    if isinstance(prefix, dict):
        prefix = prefix.get('img_path', '')
    return _empty_folder_problem(dataset, osp.normpath(osp.join(root, prefix)))


def check_data_roots(cfg: Config) -> None:
    """Check that every dataloader's ``data_root`` (and ImageNet split folder) exists, and that
    a dataset that scans a folder for images (``CustomDataset``, or ``ImageNet`` without an
    annotation file) finds at least one there.

    Args:
        cfg: A full runner config.

    Raises:
        FileNotFoundError: naming the dataloader, the path it looked at (and for an empty
            folder the layout and extensions looked for), and for ImageNet the expected
            folder layout.
    """
    for loader, dataset in _datasets(cfg):
        problem = _problem(dataset)
        if problem:
            msg = f'{loader}.dataset: {problem} (looked in {osp.abspath(dataset["data_root"])}).'
            if dataset.get('type') in _IMAGENET_TYPES:
                msg += '\n' + IMAGENET_LAYOUT.format(root=dataset['data_root'])
            raise FileNotFoundError(msg)
