"""TrainPipeline(fast_pipeline='exact'), the shipped recipes' route: the reference's output bit
for bit (pixels, every result key, the numpy RNG state after each image) through faster
kernels, on ImageNet-like JPEGs, large photos and odd files; the switch really changes the path.
"""

import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile, RandomFlip
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.datasets.transforms import RandAugment, RandomResizedCrop
from PIL import Image

from mmdeit.datasets.transforms import TrainPipeline
from mmdeit.datasets.transforms.exact_crop import crop_resize
from tests.journeys.conftest import CONFIGS
from tools.analysis.imagenet_jpegs import photo_like, write_imagenet_like_jpegs

from .odd_images import odd_images

SIZES = ((500, 375), (375, 500), (1200, 900), (3000, 2200))


@pytest.fixture(scope='module')
def augment() -> list:
    init_default_scope('mmdeit')
    cfg = Config.fromfile(str(CONFIGS / '_base_' / 'datasets' / 'imagenet_bs128_deit_224.py'))
    assert cfg.train_pipeline[0]['fast_pipeline'] == 'exact', 'the recipes ship the exact route'
    return cfg.train_pipeline[0]['transforms']


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp('photos')
    paths = write_imagenet_like_jpegs(str(folder / 'imagenet_like'), 24, seed=3)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(SIZES):
        paths.append(str(folder / f'photo_{i}.JPEG'))
        Image.fromarray(photo_like(w, h, rng)).save(paths[-1], quality=90)
    return paths


def _run(pipeline: TrainPipeline, path: str, seed: int) -> tuple:
    np.random.seed(seed)
    out = pipeline(dict(img_path=path))
    state = np.random.get_state()
    return out, (state[1].tobytes(), state[2], state[3], state[4])


def _assert_same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype, (where, key)
            np.testing.assert_array_equal(a[key], b[key], err_msg=f'{where}: {key}')
        else:
            assert a[key] == b[key], (where, key)


def test_exact_is_the_reference_bit_for_bit(augment, photos):
    ref = TrainPipeline(augment, fast_pipeline=False)
    exact = TrainPipeline(augment, fast_pipeline='exact')
    for seed in range(3 * len(photos)):
        path = photos[seed % len(photos)]
        a, state_a = _run(ref, path, seed)
        b, state_b = _run(exact, path, seed)
        assert state_a == state_b, path  # every draw the same, the normal cache too
        _assert_same(a, b, f'{path}, seed {seed}')
        assert b['img'].flags['C_CONTIGUOUS'] and b['img'].flags['WRITEABLE']


def test_odd_images_exact_or_the_same_error(augment, tmp_path):
    ref = TrainPipeline(augment, fast_pipeline=False)
    exact = TrainPipeline(augment, fast_pipeline='exact')
    for name, path in odd_images(tmp_path).items():
        for seed in range(2 if name.startswith('huge') else 12):
            try:
                a, state_a = _run(ref, path, seed)
            except Exception as err:  # the truncated JPEG: the same error, naming the file
                with pytest.raises(type(err), match=name):
                    _run(exact, path, seed)
                continue
            b, state_b = _run(exact, path, seed)
            assert state_a == state_b, name
            _assert_same(a, b, f'{name}, seed {seed}')


@pytest.mark.parametrize(
    'change',
    [
        {1: dict(type='RandomResizedCrop', scale=224, backend='cv2', interpolation='bicubic')},
        {1: dict(type='RandomResizedCrop', scale=(160, 192), backend='pillow')},  # bilinear
        {1: dict(type='RandomResizedCrop', scale=96, backend='pillow', interpolation='lanczos')},
        {0: dict(type='LoadImageFromFile', color_type='grayscale')},
    ],
    ids=['cv2-backend', 'rectangular-bilinear', 'lanczos', 'grayscale'],
)
def test_exact_on_other_crops_and_loads(augment, photos, change):
    """The kernels take what they can reproduce and hand the rest to the reference object."""
    transforms = [change.get(i, t) for i, t in enumerate(augment)]
    if 'color_type' in change.get(0, {}):  # grey (H, W) images: RandAugment needs colour
        transforms = transforms[:3]
    ref = TrainPipeline(transforms, fast_pipeline=False)
    exact = TrainPipeline(transforms, fast_pipeline='exact')
    for seed in range(12):
        path = photos[seed % len(photos)]
        a, state_a = _run(ref, path, seed)
        b, state_b = _run(exact, path, seed)
        assert state_a == state_b
        _assert_same(a, b, f'{path}, seed {seed}')


def test_the_exact_switch_changes_the_path(augment, photos, monkeypatch):
    """With 'exact' the load (of a plain JPEG), crop, flip and RandAugment objects' own
    ``transform`` never run (their draws do); with False they do."""
    for fast_pipeline in (False, 'exact'):
        pipeline = TrainPipeline(augment, fast_pipeline=fast_pipeline)
        calls = []
        for t in pipeline.transforms:
            if type(t) in (LoadImageFromFile, RandomResizedCrop, RandomFlip, RandAugment):
                name = type(t).__name__
                monkeypatch.setattr(
                    t, 'transform', lambda r, f=t.transform, n=name, c=calls: c.append(n) or f(r)
                )
        for seed in range(4):
            _run(pipeline, photos[seed], seed)
        names = ['LoadImageFromFile', 'RandomResizedCrop', 'RandomFlip', 'RandAugment']
        expected = [] if fast_pipeline else names * 4
        assert calls == expected, fast_pipeline


@pytest.mark.parametrize('shape', [(375, 500, 3), (40, 7, 3), (300, 200)])
def test_crop_resize_is_mmcv_pillow_resize_of_the_view(shape):
    """The contiguous copy changes nothing but the speed: PIL's resize of the strided view."""
    import mmcv

    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    box = (3, 1, shape[0] - 5, shape[1] - 2)  # (top, left, height, width)
    view = img[3 : shape[0] - 2, 1 : shape[1] - 1]
    assert not view.flags['C_CONTIGUOUS']
    for interpolation in ('bicubic', 'bilinear', 'nearest'):
        ref = mmcv.imresize(view, (50, 30), interpolation=interpolation, backend='pillow')
        out = crop_resize(img, box, (30, 50), interpolation)
        np.testing.assert_array_equal(out, ref)
        assert out.flags['WRITEABLE']
