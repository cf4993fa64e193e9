"""scikit-learn's handwritten digits as an mmpretrain dataset: real images, nothing to download."""

from numbers import Integral, Real
from typing import List, Optional

import numpy as np
from mmpretrain.datasets import BaseDataset

from mmdeit.registry import DATASETS

DIGITS_CLASSES = tuple(str(i) for i in range(10))


def _load_digits() -> tuple:
    """Return ``(images, labels)``: (1797, 8, 8) float pixels in 0..16 and (1797,) int labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # scikit-learn is a dev dependency of mmdeit, not a runtime one
        raise ImportError(
            'DigitsDataset needs scikit-learn (it ships the digits images): '
            'pip install scikit-learn'
        ) from err
    digits = load_digits()
    return digits.images, digits.target


def _check_subset(subset: object) -> None:
    """Raise a clear error for a ``subset`` that is neither None, a fraction nor a count."""
    if subset is None:
        return
    if isinstance(subset, bool) or not isinstance(subset, (Integral, Real)):
        raise TypeError(
            f'subset must be None, a fraction in (0, 1] or a number of images, got {subset!r}'
        )
    if isinstance(subset, Integral):
        if subset <= 0:
            raise ValueError(f'subset must be a positive number of images, got {subset}')
    elif not 0.0 < float(subset) <= 1.0:
        raise ValueError(f'subset as a fraction must be in (0, 1], got {subset!r}')


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """The 1,797 8x8 handwritten digits of scikit-learn (``load_digits``), 10 classes.

    The images ship inside scikit-learn, so nothing is downloaded or read from disk. The whole
    set is split once, stratified by class, into train and val with a fixed seed: the same
    ``seed`` and ``val_fraction`` always give the same split (1,437 / 360 images by default),
    whatever the training seed.

    Every data info holds the image itself under ``img``: a uint8 array (8, 8, 3), the 0..16
    grey levels scaled to 0..255 and replicated to three channels, so that the ordinary
    mmpretrain pipeline runs on it as on ImageNet (no ``LoadImageFromFile``; the transforms,
    ``PackInputs``, and in the model the 3-channel data preprocessor and Mixup/CutMix). The
    channels are identical, so ``to_rgb`` makes no difference. ``gt_label`` is the digit.

    Args:
        split: 'train' or 'val'. Defaults to 'train'.
        seed: Random state of the stratified split. Defaults to 0.
        val_fraction: Fraction of the images (per class, rounded as scikit-learn's
            ``train_test_split`` does) that go to 'val', in (0, 1). Defaults to 0.2.
        subset: Keep only a stratified random subset of the split (e.g. to study how
            distillation depends on the amount of training data): a fraction in (0, 1] or a
            number of images (an int >= the number of classes, at most the split's size), drawn
            per class in proportion (``train_test_split(train_size=subset, stratify=labels)``),
            in the split's order. Defaults to None: the whole split.
        subset_seed: Random state of the subset draw: the same ``seed``, ``val_fraction``,
            ``subset`` and ``subset_seed`` always give the same images, whatever the training
            seed (so every run of a comparison trains on the same subset). Defaults to 0.
        metainfo: Meta information, e.g. ``dict(classes=...)``. Defaults to None, i.e.
            ``METAINFO`` (classes '0' .. '9').
        **kwargs: Other arguments of mmpretrain's ``BaseDataset``: ``pipeline``,
            ``indices`` (e.g. an int to keep only the first images of the split),
            ``test_mode``, ``lazy_init``, ...
    """

    METAINFO = {'classes': DIGITS_CLASSES}
    SPLITS = ('train', 'val')

    def __init__(
        self,
        split: str = 'train',
        seed: int = 0,
        val_fraction: float = 0.2,
        subset: Optional[int | float] = None,
        subset_seed: int = 0,
        metainfo: Optional[dict] = None,
        **kwargs,
    ):
        if split not in self.SPLITS:
            raise ValueError(f'split must be one of {self.SPLITS}, got {split!r}')
        if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
            raise TypeError(f'seed must be a non-negative int, got {seed!r}')
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real):
            raise TypeError(f'val_fraction must be a float in (0, 1), got {val_fraction!r}')
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction!r}')
        _check_subset(subset)
        if (
            isinstance(subset_seed, bool)
            or not isinstance(subset_seed, Integral)
            or subset_seed < 0
        ):
            raise TypeError(f'subset_seed must be a non-negative int, got {subset_seed!r}')
        for key in ('ann_file', 'data_root', 'data_prefix'):
            if kwargs.get(key):
                raise ValueError(
                    f'DigitsDataset reads its images from scikit-learn and takes no {key}, '
                    f'got {kwargs[key]!r}'
                )
            kwargs.pop(key, None)
        self.split = split
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.subset = subset
        self.subset_seed = int(subset_seed)
        super().__init__(ann_file='', metainfo=metainfo, **kwargs)

    def split_indices(self) -> np.ndarray:
        """Indices into ``load_digits()`` of this split's images, in the split's order."""
        from sklearn.model_selection import train_test_split

        _, labels = _load_digits()
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)),
            test_size=self.val_fraction,
            stratify=labels,
            random_state=self.seed,
            shuffle=True,
        )
        indices = train_idx if self.split == 'train' else val_idx
        if self.subset is None or self.subset == 1.0 or self.subset == len(indices):
            return indices
        if isinstance(self.subset, Integral) and not self.subset >= len(DIGITS_CLASSES):
            raise ValueError(
                f'subset must be at least the number of classes ({len(DIGITS_CLASSES)}) to '
                f'hold every class, got {self.subset}'
            )
        if isinstance(self.subset, Integral) and self.subset > len(indices):
            raise ValueError(
                f'subset {self.subset} is larger than the {self.split} split '
                f'({len(indices)} images)'
            )
        kept, _ = train_test_split(
            indices,
            train_size=self.subset,
            stratify=labels[indices],
            random_state=self.subset_seed,
            shuffle=True,
        )
        return indices[np.isin(indices, kept)]  # in the split's order

    def load_data_list(self) -> List[dict]:
        """One dict per image: ``img`` (8, 8, 3) uint8, ``gt_label``, shapes, source index."""
        images, labels = _load_digits()
        data_list = []
        for index in self.split_indices():
            grey = np.round(images[index] * (255.0 / 16.0)).astype(np.uint8)  # (8, 8)
            img = np.repeat(grey[:, :, None], 3, axis=2)  # (8, 8, 3)
            data_list.append(
                dict(
                    img=img,
                    img_shape=img.shape[:2],
                    ori_shape=img.shape[:2],
                    gt_label=int(labels[index]),
                    digits_index=int(index),
                )
            )
        return data_list

    def extra_repr(self) -> List[str]:
        """Extra lines of ``repr``: the split and its seed."""
        lines = [f'Split: \t{self.split} (seed {self.seed}, val_fraction {self.val_fraction})']
        if self.subset is not None:
            lines.append(f'Subset: \t{self.subset} (subset_seed {self.subset_seed})')
        return lines
