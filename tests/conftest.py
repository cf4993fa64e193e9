"""Shared fixtures: tiny architectures and generated image folders (no downloads)."""

import numpy as np
import pytest
import torch
from PIL import Image

import mmdeit  # noqa: F401  (registers modules)

TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_image_folder(root, classes=('cat', 'dog'), per_class=4, size=(40, 48), seed=0):
    """Write an ImageNet-layout folder ``root/<class>/<n>.png`` of random RGB images."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            img[..., c % 3] //= 2  # a weak class signal
            Image.fromarray(img).save(root / name / f'{i}.png')
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / 'images')
