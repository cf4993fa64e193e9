"""Shared fixtures: tiny architectures and generated image folders (no downloads).

``make test`` runs the suite in two worker processes (pytest-xdist, ``-n 2 --dist loadgroup``).
Each test file is one group, so it runs in one worker and its module and session fixtures are
made once; the files that start process groups (ports, gloo) share the ``process_groups``
group, so two of them never run at the same time.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmdeit  # noqa: F401  (registers modules)

TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    """Put each test in its file's xdist group unless its file names a group of its own."""
    for item in items:
        if item.get_closest_marker('xdist_group') is None:
            item.add_marker(pytest.mark.xdist_group(item.path.relative_to(TESTS).as_posix()))


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
