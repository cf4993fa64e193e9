"""JPEGs shaped like ImageNet-1k's training images, generated from a seed (no download).

ImageNet's training JPEGs are mostly 500 pixels on the long side (500x375 and 375x500 lead,
then 500x333, 500x500, ...), with a tail of smaller and much larger photos (up to a few
thousand pixels), saved at various JPEG qualities. :func:`imagenet_like_sizes` draws from an
approximation of that (75% long side 500 with the common aspect ratios, 25% log-uniform long
side 150..2500, 3 in 4 landscape); the content is smooth colour fields with edges and fine
grain, so that files have photo-like sizes and decode costs (random noise would not).
"""

import os
import os.path as osp
from typing import List, Tuple

import numpy as np
from PIL import Image

#: short side / long side of the images with a 500-pixel long side, and their weights.
_ASPECTS = ((0.75, 0.55), (0.666, 0.2), (1.0, 0.1), (0.8, 0.08), (0.5625, 0.07))


def imagenet_like_sizes(count: int, seed: int = 0) -> List[Tuple[int, int]]:
    """``count`` (width, height) pairs drawn like ImageNet's training images.

    Args:
        count: How many sizes.
        seed: Seed of the draws. Defaults to 0.

    Returns:
        A list of ``(width, height)``.
    """
    rng = np.random.default_rng(seed)
    ratios, weights = zip(*_ASPECTS)
    sizes = []
    for _ in range(count):
        if rng.random() < 0.75:
            long_side = 500
            short = int(round(500 * rng.choice(ratios, p=np.array(weights) / sum(weights))))
        else:
            long_side = int(round(np.exp(rng.uniform(np.log(150), np.log(2500)))))
            short = max(1, int(round(long_side * rng.uniform(0.5, 1.0))))
        sizes.append((long_side, short) if rng.random() < 0.75 else (short, long_side))
    return sizes


def photo_like(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width, 3) uint8 picture: smooth colour field, a few edges, fine grain."""
    low = rng.uniform(0, 255, (max(2, height // 32), max(2, width // 32), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((width, height), Image.BICUBIC), np.float32)
    for _ in range(3):  # hard edges: rectangles of another colour
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        y1, x1 = y0 + rng.integers(1, height + 1), x0 + rng.integers(1, width + 1)
        img[y0:y1, x0:x1] = 0.5 * img[y0:y1, x0:x1] + 0.5 * rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)  # grain
    return np.clip(img, 0, 255).astype(np.uint8)


def write_imagenet_like_jpegs(folder: str, count: int, seed: int = 0) -> List[str]:
    """Write ``count`` JPEGs of ImageNet-like sizes and qualities (75..95) into ``folder``.

    Args:
        folder: Where to write ``img_<i>.JPEG`` (made if missing).
        count: How many images.
        seed: Seed of sizes, contents and qualities: the same seed gives the same files.
            Defaults to 0.

    Returns:
        The paths written, in order.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    paths = []
    for i, (w, h) in enumerate(imagenet_like_sizes(count, seed)):
        path = osp.join(folder, f'img_{i:05d}.JPEG')
        quality = int(rng.integers(75, 96))
        Image.fromarray(photo_like(w, h, rng)).save(path, format='JPEG', quality=quality)
        paths.append(path)
    return paths
