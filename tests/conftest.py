"""Shared fixtures: tiny architectures and generated image folders (no downloads).

``make test`` runs the suite in two worker processes (pytest-xdist, ``-n 2``) with the
scheduling below: each test file runs in one worker, so its module and session fixtures are
made once, and the files that start process groups (free ports, gloo) run in one worker, one
after the other, so two of them never take the same port.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import mmdeit  # noqa: F401  (registers modules)

TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
PROCESS_GROUP_FILES = {  # a new test file that starts process groups goes here
    'tests/engine/test_cpu_distributed.py',
    'tests/engine/test_distributed_exit.py',
    'tests/engine/test_slurm_environment.py',
    'tests/tools/test_dist_train.py',
    'tests/tools/test_multi_node.py',
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each file one unit of work for a worker; the process-group files together one."""
    from xdist.scheduler import LoadFileScheduling

    class FileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return 'process groups' if path in PROCESS_GROUP_FILES else path

    return FileScheduling(config, log)


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
