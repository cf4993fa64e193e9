"""The fast route's own steps against what they replace: the resize against PIL's, the flip
against mmcv's RandomFlip, the JPEG header read, the DCT scale choice."""

import io

import numpy as np
import pytest
from mmcv.transforms import RandomFlip
from PIL import Image

from mmdeit.datasets.transforms.fast_route import dct_scale, flip, jpeg_size, resize
from tools.analysis.imagenet_jpegs import photo_like


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear', 'nearest', 'lanczos'])
@pytest.mark.parametrize('size', [(375, 500), (250, 300), (224, 224), (150, 120), (5, 400)])
def test_resize_within_two_levels_of_pil(size, interpolation):
    img = photo_like(size[1], size[0], np.random.default_rng(sum(size)))
    view = img[1:, 2:]  # a crop: a strided view, as the fast route passes it
    resample = Image.Resampling[interpolation.upper()]
    ref = np.asarray(Image.fromarray(np.ascontiguousarray(view)).resize((224, 200), resample))
    out = resize(view, 200, 224, interpolation)
    assert out.shape == (200, 224, 3) and out.dtype == np.uint8
    assert out.flags['C_CONTIGUOUS'] and out.flags['WRITEABLE']
    assert np.abs(out.astype(int) - ref).max() <= 2


@pytest.mark.parametrize('direction', ['horizontal', 'vertical', 'diagonal'])
def test_flip_is_mmcv_random_flip(direction):
    img = photo_like(64, 48, np.random.default_rng(0))
    random_flip = RandomFlip(prob=0.5, direction=direction)
    for seed in range(20):
        np.random.seed(seed)
        ref = random_flip(dict(img=img.copy()))
        state = np.random.get_state()[2]
        np.random.seed(seed)
        out = flip(random_flip, dict(img=img.copy()))
        assert np.random.get_state()[2] == state
        assert (out['flip'], out['flip_direction']) == (ref['flip'], ref['flip_direction'])
        np.testing.assert_array_equal(out['img'], ref['img'])
        assert out['img'].flags['C_CONTIGUOUS']


def _encoded(fmt: str, orientation=None) -> bytes:
    buf, kwargs = io.BytesIO(), {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs['exif'] = exif.tobytes()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    'data, size',
    [
        (_encoded('JPEG'), (40, 30)),
        (_encoded('JPEG', orientation=1), (40, 30)),
        (_encoded('JPEG', orientation=6), None),  # rotated: decoded at full scale
        (_encoded('PNG'), None),
        (b'not an image', None),
    ],
)
def test_jpeg_size(data, size):
    assert jpeg_size(data) == size


@pytest.mark.parametrize(
    'crop, k',
    [((224, 224), 1), ((447, 600), 1), ((448, 448), 2), ((900, 1000), 4), ((5000, 2000), 8)],
)
def test_dct_scale_keeps_the_crop_at_least_the_output(crop, k):
    assert dct_scale(*crop, 224, 224) == k
    assert crop[0] // k >= 224 and crop[1] // k >= 224 or k == 1
