"""TrainPipeline: the fast route against the reference, on the shipped DeiT 224 recipe.

Same seed, same draws: the numpy RNG state after every image is the same on both routes, and so
are the crop boxes (recorded), the flips and the output's shape. Pixels: the decode-crop-resize
step is within ``RESIZE_TOL`` grey levels of the reference where the JPEG is decoded at full
scale (torch's resize against PIL's) and within ``CROP_PSNR_DB`` where it is decoded at a
reduced DCT scale (the bounds docs/benchmarks.md states); every later step is exact (its own
tests: test_fast_randaugment.py, test_fast_route.py); the whole pipeline's per-channel mean/std
over many draws is within ``STAT_TOL`` grey levels.
"""

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from PIL import Image

from mmdeit.datasets.transforms import TrainPipeline, dct_scale
from mmdeit.registry import TRANSFORMS
from tests.journeys.conftest import CONFIGS
from tools.analysis.imagenet_jpegs import photo_like

from .odd_images import odd_images

CROP_PSNR_DB = 40.0  # the fused decode+crop at a reduced DCT scale, against the reference
RESIZE_TOL = 2  # the fused decode+crop at full scale: torch's antialiased resize against PIL's
STAT_TOL = 1.0  # per-channel mean and std over the draws, grey levels (0..255)
#: (width, height): ImageNet's usual 500x375, and large photos that decode at 1/2..1/8 scale
SIZES = ((500, 375), (375, 500), (1200, 900), (2000, 1500), (3000, 2200))


@pytest.fixture(scope='module')
def augment() -> list:
    init_default_scope('mmdeit')
    cfg = Config.fromfile(str(CONFIGS / '_base_' / 'datasets' / 'imagenet_bs128_deit_224.py'))
    wrapper = cfg.train_pipeline[0]
    assert wrapper['type'] == 'TrainPipeline' and wrapper['fast_pipeline'] == 'exact'
    return wrapper['transforms']


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        paths.append(str(folder / f'photo_{i}.JPEG'))
        Image.fromarray(photo_like(w, h, rng)).save(paths[-1], quality=90)
    return paths


def _pipelines(transforms: list) -> tuple:
    ref = TrainPipeline(transforms, fast_pipeline=False)
    fast = TrainPipeline(transforms, fast_pipeline=True)
    return ref, fast


def _record_boxes(pipeline: TrainPipeline) -> list:
    """Record every crop box the pipeline's RandomResizedCrop draws."""
    crop, boxes = pipeline.transforms[1], []
    draw = crop.rand_crop_params

    def recorded(img):
        boxes.append(draw(img))
        return boxes[-1]

    crop.rand_crop_params = recorded
    return boxes


def _run(pipeline, path: str, seed: int) -> tuple:
    np.random.seed(seed)
    out = pipeline(dict(img_path=path))
    state = np.random.get_state()
    return out, (state[1].tobytes(), state[2])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float('inf') if mse == 0 else 10 * np.log10(255**2 / mse)


def test_same_draws_and_shapes(augment, photos):
    ref, fast = _pipelines(augment)
    ref_boxes, fast_boxes = _record_boxes(ref), _record_boxes(fast)
    full = reduced = 0
    for seed in range(40):
        path = photos[seed % len(photos)]
        a, state_a = _run(ref, path, seed)
        b, state_b = _run(fast, path, seed)
        assert state_a == state_b  # every draw (crop, flip, RandAugment, erasing) the same
        assert ref_boxes[-1] == fast_boxes[-1] and a['flip'] == b['flip']
        assert a['img'].shape == b['img'].shape == (224, 224, 3) and b['img'].dtype == np.uint8
        assert a['ori_shape'] == b['ori_shape'] and a['img_shape'] == b['img_shape']
        assert b['img'].flags['C_CONTIGUOUS']
        _, _, h, w = fast_boxes[-1]
        if dct_scale(w, h, 224, 224) == 1:
            full += 1
        else:
            reduced += 1
    assert full >= 10 and reduced >= 10, (full, reduced)


def test_reduced_scale_crop_within_bound(augment, photos):
    ref, fast = _pipelines(augment[:2])  # load + crop: the only step whose pixels differ
    boxes = _record_boxes(fast)
    psnrs = {}
    for seed in range(30):
        path = photos[2 + seed % 3]  # the large ones
        a, _ = _run(ref, path, seed)
        b, _ = _run(fast, path, seed)
        _, _, h, w = boxes[-1]
        psnrs.setdefault(dct_scale(w, h, 224, 224), []).append(_psnr(a['img'], b['img']))
    assert {1, 2, 4, 8} <= set(psnrs), sorted(psnrs)
    for k in (2, 4, 8):
        assert min(psnrs[k]) >= CROP_PSNR_DB, (k, min(psnrs[k]))


def test_full_scale_crop_within_resize_tol(augment, photos):
    ref, fast = _pipelines(augment[:2])  # load + crop: the only step whose pixels differ
    boxes, checked = _record_boxes(fast), 0
    for seed in range(40):
        path = photos[seed % 2]  # 500x375, 375x500: mostly decoded at full scale
        a, _ = _run(ref, path, seed)
        b, _ = _run(fast, path, seed)
        _, _, h, w = boxes[-1]
        if dct_scale(w, h, 224, 224) == 1:
            diff = np.abs(a['img'].astype(int) - b['img'])
            assert diff.max() <= RESIZE_TOL, (seed, diff.max())
            checked += 1
    assert checked >= 30


def test_output_statistics_match(augment, photos):
    ref, fast = _pipelines(augment)
    stats = []
    for pipeline in (ref, fast):
        imgs = [_run(pipeline, photos[2 + s % 2], s)[0]['img'] for s in range(48)]
        pixels = np.stack(imgs).reshape(-1, 3).astype(np.float64)
        stats.append((pixels.mean(0), pixels.std(0)))
    np.testing.assert_allclose(stats[0][0], stats[1][0], atol=STAT_TOL)
    np.testing.assert_allclose(stats[0][1], stats[1][1], atol=STAT_TOL)


def test_the_switch_changes_the_path(augment, photos, monkeypatch):
    """The fast route never runs the reference decoder on a plain JPEG; the reference does."""
    calls = []
    for fast_pipeline in (False, True):
        pipeline = TrainPipeline(augment, fast_pipeline=fast_pipeline)
        load = pipeline.transforms[0]
        monkeypatch.setattr(load, 'transform', lambda r, f=load.transform: calls.append(1) or f(r))
        before = len(calls)
        pipeline(dict(img_path=photos[0]))
        assert (len(calls) > before) == (not fast_pipeline)


def test_odd_images_never_raise_and_match(augment, tmp_path):
    """Every odd file through the whole pipeline, both routes: the same draws; the fast
    route's decode-crop-resize step (full scale for all but the huge photo) within
    ``RESIZE_TOL`` of the reference's."""
    ref, fast = _pipelines(augment)
    crop_ref, crop_fast = _pipelines(augment[:2])
    files = odd_images(tmp_path)
    draws = 0
    for name, path in files.items():
        for seed in range(2 if name.startswith('huge') else 40):
            if name == 'truncated.jpg':  # OpenCV reads nothing: both name the file
                for pipeline in (ref, fast):
                    with pytest.raises(Exception, match='truncated.jpg'):
                        _run(pipeline, path, seed)
                continue
            a, state_a = _run(ref, path, seed)
            b, state_b = _run(fast, path, seed)
            assert state_a == state_b, name
            assert b['img'].shape == (224, 224, 3) and b['img'].dtype == np.uint8, name
            if not name.startswith('huge'):
                a, _ = _run(crop_ref, path, seed)
                b, _ = _run(crop_fast, path, seed)
                assert np.abs(a['img'].astype(int) - b['img']).max() <= RESIZE_TOL, name
            draws += 1
    assert draws >= 400  # per route


def test_unreadable_image_names_the_file(augment, tmp_path):
    path = tmp_path / 'not_an_image.jpg'
    path.write_bytes(b'this is not a JPEG')
    for pipeline in _pipelines(augment):
        with pytest.raises(Exception, match='not_an_image.jpg'):
            pipeline(dict(img_path=str(path)))


@pytest.mark.parametrize(
    'change, field',
    [
        (
            {1: dict(type='RandomResizedCrop', scale=224, backend='cv2')},
            'RandomResizedCrop.backend',
        ),
        ({0: dict(type='LoadImageFromFile', to_float32=True)}, 'LoadImageFromFile.to_float32'),
        ({0: dict(type='RandomFlip', prob=0.5)}, 'start with LoadImageFromFile'),
    ],
)
def test_fast_route_refuses_what_it_cannot_fuse(augment, change, field):
    transforms = [change.get(i, t) for i, t in enumerate(augment)]
    with pytest.raises(ValueError, match=field):
        TrainPipeline(transforms, fast_pipeline=True)
    TrainPipeline(transforms, fast_pipeline=False)  # the reference takes any list


@pytest.mark.parametrize(
    'value, error', [('yes', ValueError), ('True', ValueError), (1, TypeError), (None, TypeError)]
)
def test_switch_must_be_a_bool_or_exact(augment, value, error):
    with pytest.raises(error, match="TrainPipeline.fast_pipeline must be False, 'exact' or True"):
        TRANSFORMS.build(dict(type='TrainPipeline', transforms=augment, fast_pipeline=value))
