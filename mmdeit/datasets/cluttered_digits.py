"""Cluttered, translated digits: scikit-learn's digits at random places on a cluttered canvas.

The classic test of a model's spatial inductive bias (cluttered, translated MNIST), generated
deterministically from the 1,797 digits that ship inside scikit-learn: nothing is downloaded.
"""

from numbers import Integral
from typing import List, Optional, Tuple

import numpy as np

from mmdeit.registry import DATASETS

from .digits import DigitsDataset, _load_digits

DIGIT_SIZE = 8  # the side of a scikit-learn digit, in pixels
#: Draws of a fragment's source digit and crop before one with ink is kept (blank crops are
#: redrawn, so that ``num_fragments`` is the number of visible fragments, not an upper bound).
FRAGMENT_TRIES = 10


def _check_int(name: str, value: object, low: int, high: Optional[int] = None, why: str = ''):
    """Raise a clear error, naming ``name``, unless ``value`` is an int in ``[low, high]``."""
    bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f'{name} must be an int {bounds}{why}, got {value!r}')
    if value < low or (high is not None and value > high):
        raise ValueError(f'{name} must be an int {bounds}{why}, got {value!r}')


def _scaled(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` enlarged ``scale`` times by pixel replication (no interpolation)."""
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


@DATASETS.register_module()
class ClutteredDigitsDataset(DigitsDataset):
    """Cluttered, translated digits made from scikit-learn's 1,797 8x8 digits, 10 classes.

    Each image is a black ``canvas_size`` x ``canvas_size`` canvas holding one digit of the split
    (its label is the image's), enlarged ``digit_scale`` times by pixel replication and placed
    at a uniformly random position wholly inside the canvas, plus ``num_fragments`` clutter
    fragments: ``fragment_size`` x ``fragment_size`` crops, at random positions, of random
    other digits of the same split whose label differs from the image's (a crop without ink is
    drawn again). Fragments go anywhere on the canvas, over the digit too; where they overlap,
    the brighter pixel wins (pixel-wise maximum). The class is in the shape at one unknown
    place, not in the position and not in the clutter: what a convnet's translation
    equivariance and locality give for free and a small transformer must learn from data.

    The difficulty knob is ``num_fragments`` (0: translated digits without clutter), with
    ``canvas_size`` (more room to search) and ``fragment_size`` (bigger, more digit-like
    fragments). The defaults (a 16x16 digit on a 32x32 canvas with 4 fragments of 6x6 pixels)
    are the task's stated difficulty.

    The split, ``subset`` and data format are those of :class:`DigitsDataset` (1,437 train /
    360 val images by default, the same images per split): every data info holds the image
    under ``img``, a uint8 array (canvas_size, canvas_size, 3), grey 0..255 replicated to three
    channels, with ``gt_label`` (the placed digit's), ``digits_index`` (its index in
    ``load_digits()``), ``digit_box`` (``(top, left, bottom, right)`` of the placed digit, bottom
    and right exclusive) and ``clutter_indices`` (the ``load_digits()`` indices of the
    fragments' sources). An image is a function of its digit's index, the split arguments and
    the clutter arguments only: the same in every subset, whatever the training seed or the
    global random state, and different from every other image. The fragments of an image come
    from its own split, so train and val share no digit, placed or as clutter.

    Args:
        split: 'train' or 'val'. Defaults to 'train'.
        seed: Random state of the stratified split, as in :class:`DigitsDataset`. Defaults to 0.
        val_fraction: Fraction of the images that go to 'val', in (0, 1). Defaults to 0.2.
        subset: A stratified random subset of the split, as in :class:`DigitsDataset`.
            Defaults to None: the whole split.
        subset_seed: Random state of the subset draw. Defaults to 0.
        canvas_size: Side of the square canvas in pixels, at least ``8 * digit_scale``.
            Defaults to 32.
        digit_scale: Integer enlargement of the 8x8 digits (and of the fragments' sources),
            at least 1. Defaults to 2 (16x16 digits).
        num_fragments: Clutter fragments per image, at least 0. Defaults to 4.
        fragment_size: Side of each fragment in canvas pixels, from 1 to ``8 * digit_scale``.
            Defaults to 6.
        clutter_seed: Random state of the placements and of the clutter (each image's drawn
            from it and its digit's index), at least 0. Defaults to 0.
        metainfo: Meta information. Defaults to None, i.e. ``METAINFO`` (classes '0' .. '9').
        **kwargs: Other arguments of mmpretrain's ``BaseDataset``: ``pipeline``, ``indices``,
            ``test_mode``, ``lazy_init``, ...

    Raises:
        TypeError: An argument of the wrong type, named.
        ValueError: An argument out of its range, named (e.g. a canvas smaller than the digit).
    """

    def __init__(
        self,
        split: str = 'train',
        seed: int = 0,
        val_fraction: float = 0.2,
        subset: Optional[int | float] = None,
        subset_seed: int = 0,
        canvas_size: int = 32,
        digit_scale: int = 2,
        num_fragments: int = 4,
        fragment_size: int = 6,
        clutter_seed: int = 0,
        metainfo: Optional[dict] = None,
        **kwargs,
    ):
        _check_int('digit_scale', digit_scale, 1)
        digit = DIGIT_SIZE * int(digit_scale)
        why = f' (8 x digit_scale {digit_scale})'
        _check_int('canvas_size', canvas_size, digit, why=why)
        _check_int('num_fragments', num_fragments, 0)
        _check_int('fragment_size', fragment_size, 1, digit, why=why)
        _check_int('clutter_seed', clutter_seed, 0)
        self.canvas_size = int(canvas_size)
        self.digit_scale = int(digit_scale)
        self.num_fragments = int(num_fragments)
        self.fragment_size = int(fragment_size)
        self.clutter_seed = int(clutter_seed)
        super().__init__(
            split=split,
            seed=seed,
            val_fraction=val_fraction,
            subset=subset,
            subset_seed=subset_seed,
            metainfo=metainfo,
            **kwargs,
        )

    def clutter_pool(self) -> np.ndarray:
        """Indices into ``load_digits()`` of the whole split (before ``subset``): the fragments'
        sources."""
        split = DigitsDataset(
            split=self.split, seed=self.seed, val_fraction=self.val_fraction, lazy_init=True
        )
        return split.split_indices()

    def render(
        self, index: int, images: np.ndarray, labels: np.ndarray, pool: np.ndarray
    ) -> Tuple[np.ndarray, Tuple[int, int, int, int], Tuple[int, ...]]:
        """The canvas of the digit ``load_digits()[index]``.

        Args:
            index: The placed digit's index in ``load_digits()``.
            images: ``load_digits()``'s images, (1797, 8, 8), 0..16.
            labels: ``load_digits()``'s labels, (1797,).
            pool: The indices the fragments are drawn from (:meth:`clutter_pool`).

        Returns:
            ``(canvas, digit_box, clutter_indices)``: the (canvas_size, canvas_size) float
            canvas in 0..16, the digit's ``(top, left, bottom, right)`` and the fragments'
            source indices.
        """
        rng = np.random.default_rng([self.clutter_seed, int(index)])
        side, size = DIGIT_SIZE * self.digit_scale, self.fragment_size
        canvas = np.zeros((self.canvas_size, self.canvas_size), dtype=np.float64)
        top, left = (int(v) for v in rng.integers(0, self.canvas_size - side + 1, size=2))
        canvas[top : top + side, left : left + side] = _scaled(images[index], self.digit_scale)
        others = pool[labels[pool] != labels[index]]
        sources = []
        for _ in range(self.num_fragments):
            for _ in range(FRAGMENT_TRIES):
                source = int(others[rng.integers(len(others))])
                row, col = rng.integers(0, side - size + 1, size=2)
                fragment = _scaled(images[source], self.digit_scale)[
                    row : row + size, col : col + size
                ]
                if fragment.any():
                    break
            y, x = rng.integers(0, self.canvas_size - size + 1, size=2)
            region = canvas[y : y + size, x : x + size]
            np.maximum(region, fragment, out=region)
            sources.append(source)
        return canvas, (top, left, top + side, left + side), tuple(sources)

    def load_data_list(self) -> List[dict]:
        """One dict per image: ``img`` (canvas_size, canvas_size, 3) uint8, ``gt_label``,
        shapes, ``digits_index``, ``digit_box``, ``clutter_indices``."""
        images, labels = _load_digits()
        pool = self.clutter_pool()
        data_list = []
        for index in self.split_indices():
            canvas, box, sources = self.render(int(index), images, labels, pool)
            grey = np.round(canvas * (255.0 / 16.0)).astype(np.uint8)
            img = np.repeat(grey[:, :, None], 3, axis=2)
            data_list.append(
                dict(
                    img=img,
                    img_shape=img.shape[:2],
                    ori_shape=img.shape[:2],
                    gt_label=int(labels[index]),
                    digits_index=int(index),
                    digit_box=box,
                    clutter_indices=sources,
                )
            )
        return data_list

    def extra_repr(self) -> List[str]:
        """Extra lines of ``repr``: the split, its seed and the clutter."""
        return super().extra_repr() + [
            f'Canvas: \t{self.canvas_size}x{self.canvas_size}, digits x{self.digit_scale}, '
            f'{self.num_fragments} fragments of {self.fragment_size}x{self.fragment_size} '
            f'(clutter_seed {self.clutter_seed})'
        ]
