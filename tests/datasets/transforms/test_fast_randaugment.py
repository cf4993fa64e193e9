"""The fast route's RandAugment: every point operation's lookup table gives the reference op's
pixels bit for bit and consumes the same draws, alone and inside the recipe's RandAugment."""

import copy

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdeit.datasets.transforms import fast_randaugment as fra
from mmdeit.registry import TRANSFORMS
from tests.journeys.conftest import CONFIGS
from tools.analysis.imagenet_jpegs import photo_like


@pytest.fixture(scope='module')
def randaugment():
    init_default_scope('mmdeit')
    cfg = Config.fromfile(str(CONFIGS / '_base_' / 'datasets' / 'imagenet_bs128_deit_224.py'))
    (policy,) = [t for t in cfg.train_augment if t['type'] == 'RandAugment']
    return TRANSFORMS.build(policy)


def _images() -> list:
    """Photo-like BGR images of odd sizes, noise, flat and two-valued ones (edge cases of
    AutoContrast and Equalize: one value, no step)."""
    rng = np.random.default_rng(0)
    imgs = [np.ascontiguousarray(photo_like(int(w), int(h), rng)[:, :, ::-1])
            for w, h in rng.integers(8, 260, (8, 2))]  # fmt: skip
    imgs.append(rng.integers(0, 256, (224, 224, 3)).astype(np.uint8))
    imgs.append(np.zeros((20, 30, 3), np.uint8))
    imgs.append(np.full((20, 30, 3), 255, np.uint8))
    imgs.append(rng.integers(100, 102, (32, 32, 3)).astype(np.uint8))
    return imgs


def _state() -> tuple:
    state = np.random.get_state()
    return state[1].tobytes(), state[2], state[3], state[4]


@pytest.mark.parametrize('op_type', sorted(k.__name__ for k in fra.KERNELS))
def test_kernel_is_the_reference_op(randaugment, op_type):
    ops = [op for op in randaugment.transforms if type(op).__name__ == op_type]
    assert ops, f'{op_type} is not in the recipe policy'
    op = copy.deepcopy(ops[0])
    op.prob = 0.7  # both branches: disabled (no draws after) and applied
    applied = 0
    for seed in range(30):
        for img in _images():
            np.random.seed(seed)
            ref = op(dict(img=img.copy()))['img']
            state_ref = _state()
            np.random.seed(seed)
            out = fra.KERNELS[type(op)](op, img.copy())
            assert _state() == state_ref
            applied += out is not None
            out = img if out is None else out
            assert out.dtype == ref.dtype == np.uint8
            np.testing.assert_array_equal(out, ref, err_msg=f'{op_type} seed {seed}')
    assert applied > 100


def test_whole_randaugment_is_the_reference(randaugment):
    imgs = _images()
    for seed in range(200):
        img = imgs[seed % len(imgs)]
        np.random.seed(seed)
        ref = randaugment(dict(img=img.copy()))['img']
        state_ref = _state()
        np.random.seed(seed)
        out = fra.fast_randaugment(randaugment, dict(img=img.copy()))['img']
        assert _state() == state_ref
        np.testing.assert_array_equal(out, ref)


def test_the_kernels_run_instead_of_the_reference_ops(randaugment, monkeypatch):
    """The fast route calls a point op's table, never the op's own transform (it can fail)."""
    calls = []

    def counted(name, fn):
        def call(*args):
            calls.append(name)
            return fn(*args)

        return call

    for op in randaugment.transforms:
        if type(op) in fra.KERNELS:
            monkeypatch.setattr(op, 'transform', counted('reference', op.transform))
    kernels = {t: counted('kernel', k) for t, k in fra.KERNELS.items()}
    monkeypatch.setattr(fra, 'KERNELS', kernels)
    img = _images()[0]
    for seed in range(50):
        np.random.seed(seed)
        fra.fast_randaugment(randaugment, dict(img=img.copy()))
    assert calls.count('kernel') > 10 and 'reference' not in calls, calls


@pytest.mark.parametrize('shape', [(256, 1), (256,)])
def test_histograms_take_either_opencv_shape(monkeypatch, shape):
    """``cv2.calcHist`` returns (256, 1) before OpenCV 4.12 and (256,) after (seen on a GPU
    machine's image, where AutoContrast and Equalize raised IndexError in the loader)."""
    import cv2

    calc = cv2.calcHist
    monkeypatch.setattr(fra.cv2, 'calcHist', lambda *a: calc(*a).reshape(shape))
    img = np.random.default_rng(0).integers(0, 256, (24, 40, 3)).astype(np.uint8)
    for c, histo in enumerate(fra._histograms(img)):
        assert histo.shape == (256,) and histo.dtype == np.int64
        np.testing.assert_array_equal(histo, np.bincount(img[..., c].ravel(), minlength=256))
