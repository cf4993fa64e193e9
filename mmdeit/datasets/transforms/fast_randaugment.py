"""RandAugment's point operations as 256-entry lookup tables: the fast route's RandAugment.

mmpretrain's ``RandAugment`` (the reference) applies its per-pixel operations with numpy
(``np.histogram`` per channel, float64 lookup tables indexed per pixel, ``np.where``) at about
0.3-3.7 ms per 224x224 image on one core. Every one of those maps a pixel value ``v`` of a
channel to a new value that depends only on ``v`` and on numbers drawn or measured once per
image (the threshold, the factor, the channel's histogram, the grey mean), so each is one
``cv2.LUT`` through a table computed by **the reference's own arithmetic on the 256 values**:
the same pixels, bit for bit (tested against the reference ops on random images and draws).

The draws are the reference op's own methods (``random_disable``, ``random_magnitude``,
``random_negative``), called in the order its ``transform`` calls them, so the numpy RNG
stream is the reference's. Operations that are not point operations (the geometric ones,
``ColorTransform``, ``Sharpness``) and any subclass run as the reference object itself.
"""

from typing import Callable, Dict, Optional

import cv2
import numpy as np
from mmpretrain.datasets.transforms import auto_augment as aa

_VALUES = np.arange(256, dtype=np.uint8)


def _apply(img: np.ndarray, tables) -> np.ndarray:
    """``img`` (H, W, C) uint8 through one (256,) table for all channels, or a list of one
    per channel (None: the channel as it is)."""
    if isinstance(tables, np.ndarray):
        return cv2.LUT(img, tables)
    per_channel = [_VALUES if t is None else t for t in tables]
    return cv2.LUT(img, np.stack(per_channel, axis=-1)[:, None, :])  # (256, 1, C)


def _histograms(img: np.ndarray) -> list:
    """Per channel, the count of every value 0..255 (int64): ``np.histogram(x, 256, (0, 255))``
    of uint8 values, which puts value v in bin v. OpenCV counts in float32, exact below 2**24
    pixels per value; larger images take numpy. OpenCV gives (256, 1) before 4.12 and (256,)
    from then on: flattened either way."""
    if img.shape[0] * img.shape[1] >= 1 << 24:
        return [np.bincount(img[..., c].ravel(), minlength=256) for c in range(img.shape[-1])]
    return [cv2.calcHist([img], [c], None, [256], [0, 256]).reshape(256).astype(np.int64)
            for c in range(img.shape[-1])]  # fmt: skip


def _magnitude(op) -> float:
    """``op.magnitude`` if set, else a drawn one, then the random sign: the reference order."""
    if op.magnitude is not None:
        return op.random_negative(op.magnitude)
    return op.random_negative(op.random_magnitude())


def _weighted(values: np.ndarray, factor: float, other: np.ndarray) -> np.ndarray:
    """mmcv's blend ``clip(values * factor + other * (1 - factor))`` as uint8: its code."""
    out = cv2.addWeighted(values.astype(np.float32), factor, other.astype(np.float32),
                          1 - factor, 0)  # fmt: skip
    return np.clip(out, 0, 255).astype(np.uint8)


def invert(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    return _apply(img, np.full_like(_VALUES, 255) - _VALUES)


def solarize(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    thr = op.thr if op.thr is not None else op.random_magnitude()
    return _apply(img, np.where(_VALUES < thr, _VALUES, 255 - _VALUES).astype(np.uint8))


def solarize_add(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    magnitude = op.magnitude if op.magnitude is not None else op.random_magnitude()
    table = np.where(_VALUES < op.thr, np.minimum(_VALUES + magnitude, 255), _VALUES)
    return _apply(img, table.astype(np.uint8))


def posterize(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    bits = op.bits if op.bits is not None else op.random_magnitude()
    shift = 8 - int(np.ceil(bits))  # the reference rounds bits up (timm's convention)
    return _apply(img, np.left_shift(np.right_shift(_VALUES, shift), shift))


def brightness(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    factor = 1 + _magnitude(op)
    return _apply(img, _weighted(_VALUES, factor, np.zeros_like(_VALUES)))


def contrast(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    factor = 1 + _magnitude(op)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    mean = round(np.sum(grey) / grey.size)  # mmcv: sum over the histogram's count, all pixels
    return _apply(img, _weighted(_VALUES, factor, np.full_like(_VALUES, mean)))


def auto_contrast(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    tables = []
    for histo in _histograms(img):  # mmcv.auto_contrast with cutoff 0
        nonzero = np.nonzero(histo)[0]
        low, high = nonzero[0], nonzero[-1]
        if low >= high:
            tables.append(None)
            continue
        scale = 255.0 / (high - low)
        offset = -low * scale
        table = np.clip(np.arange(256) * scale + offset, 0, 255)
        tables.append(table.astype(np.uint8))
    return _apply(img, tables)


def equalize(op, img: np.ndarray) -> Optional[np.ndarray]:
    if op.random_disable():
        return None
    tables = []
    for histo in _histograms(img):  # mmcv.imequalize
        nonzero = histo[histo > 0]
        step = (np.sum(nonzero) - nonzero[-1]) // 255
        if not step:
            tables.append(None)
            continue
        table = (np.cumsum(histo) + (step // 2)) // step
        table = np.concatenate([[0], table[:-1]], 0)
        table[table > 255] = 255
        tables.append(table.astype(np.uint8))
    return _apply(img, tables)


#: mmpretrain op class -> its lookup-table kernel ``(op, img) -> img, or None when disabled``.
KERNELS: Dict[type, Callable] = {
    aa.Invert: invert,
    aa.Solarize: solarize,
    aa.SolarizeAdd: solarize_add,
    aa.Posterize: posterize,
    aa.Brightness: brightness,
    aa.Contrast: contrast,
    aa.AutoContrast: auto_contrast,
    aa.Equalize: equalize,
}


def fast_randaugment(randaugment: aa.RandAugment, results: dict) -> dict:
    """``randaugment(results)`` with the point operations as lookup tables.

    Args:
        randaugment: The reference ``RandAugment`` (its policies, its draws).
        results: The pipeline's results; ``results['img']`` is (H, W, 3) uint8 BGR.

    Returns:
        ``results``, with the same image the reference gives for the same RNG state.
    """
    for index in randaugment.random_policy_indices():
        op = randaugment.transforms[index]
        kernel = KERNELS.get(type(op))
        if kernel is None or results['img'].dtype != np.uint8:
            results = op(results)
            continue
        img = kernel(op, results['img'])
        if img is not None:
            results['img'] = img
    return results
