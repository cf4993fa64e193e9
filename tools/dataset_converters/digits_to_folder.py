"""Write scikit-learn's digits as an image folder in mmpretrain's ``CustomDataset`` layout.

``OUT/train/<digit>/<index>.png`` and ``OUT/val/<digit>/<index>.png``: the same stratified split
as :class:`mmdeit.datasets.DigitsDataset` (1,437 train / 360 val images by default), each image
the dataset's 8x8 grey digit scaled to 0..255, replicated to 3 channels, saved losslessly
(PNG), so that a config reading the folder with ``LoadImageFromFile`` sees exactly the pixels
``DigitsDataset`` hands its pipeline. A real, small data set to try the custom-dataset recipe
on (docs/custom_dataset.md) without downloading anything.

Example::

    python tools/dataset_converters/digits_to_folder.py data/digits_folder
"""

import argparse
import logging
import os
import os.path as osp
from typing import Dict

from mmengine.logging import print_log
from PIL import Image


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='digits -> CustomDataset image folder')
    parser.add_argument('out', help='output folder (gets train/ and val/)')
    parser.add_argument('--seed', type=int, default=0, help='split seed (DigitsDataset seed)')
    parser.add_argument('--val-fraction', type=float, default=0.2, help='as DigitsDataset')
    parser.add_argument('--force', action='store_true', help='write into a non-empty folder')
    return parser.parse_args(argv)


def write_folder(out: str, seed: int = 0, val_fraction: float = 0.2) -> Dict[str, int]:
    """Write both splits under ``out``; return the number of images per split.

    Args:
        out: The output folder.
        seed: The split seed, as ``DigitsDataset(seed=...)``. Defaults to 0.
        val_fraction: The val fraction, as ``DigitsDataset(val_fraction=...)``. Defaults to 0.2.
    """
    from mmdeit.datasets import DigitsDataset

    counts = {}
    for split in DigitsDataset.SPLITS:
        dataset = DigitsDataset(split=split, seed=seed, val_fraction=val_fraction)
        classes = dataset.metainfo['classes']
        for name in classes:
            os.makedirs(osp.join(out, split, name), exist_ok=True)
        for info in dataset.load_data_list():
            path = osp.join(out, split, classes[info['gt_label']], f'{info["digits_index"]}.png')
            Image.fromarray(info['img']).save(path)  # (8, 8, 3) uint8, lossless
        counts[split] = len(dataset)
    return counts


def main(argv=None) -> Dict[str, int]:
    args = parse_args(argv)
    if osp.isdir(args.out) and os.listdir(args.out) and not args.force:
        raise SystemExit(f'{args.out} exists and is not empty; pass --force to write into it')
    counts = write_folder(args.out, args.seed, args.val_fraction)
    print_log(
        f'wrote {counts["train"]} train / {counts["val"]} val digits to {args.out}',
        logger='current',
        level=logging.INFO,
    )
    return counts


if __name__ == '__main__':
    main()
