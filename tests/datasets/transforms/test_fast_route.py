"""The fast route's own steps against what they replace: the full-scale decode against OpenCV's,
the resize against PIL's, the flip against mmcv's RandomFlip, the JPEG header read, the DCT
scale choice."""

import io

import cv2
import numpy as np
import pytest
import simplejpeg
from mmcv.transforms import RandomFlip
from PIL import Image

from mmdeit.datasets.transforms.fast_route import (
    dct_scale,
    decode_full_scale,
    flip,
    jpeg_size,
    resize,
)
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


def _jpeg(img: np.ndarray, mode: str = 'RGB', **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, 'JPEG', **save)
    return buf.getvalue()


def _decode_cases() -> dict:
    rng = np.random.default_rng(3)
    photo = photo_like(500, 375, rng)
    cases = {
        f'q{q}_sub{sub}': _jpeg(photo, quality=q, subsampling=sub)
        for q in (75, 90, 95)
        for sub in (0, 1, 2)  # 4:4:4, 4:2:2, 4:2:0
    }
    cases['progressive'] = _jpeg(photo, quality=90, progressive=True)
    cases['odd_size_333x257'] = _jpeg(photo_like(333, 257, rng), quality=85)
    cases['grey'] = _jpeg(photo, 'L', quality=90)
    cases['cmyk'] = _jpeg(photo, 'CMYK', quality=90)
    cases['tiny_1x1'] = _jpeg(photo[:1, :1])
    cases['restart_markers'] = _jpeg(photo, quality=90, restart_marker_blocks=4)
    return cases


@pytest.mark.parametrize('name, data', list(_decode_cases().items()))
def test_full_scale_decode_is_opencvs(name, data):
    """simplejpeg's decode gives OpenCV's IMREAD_COLOR pixels (the reference's), bit for bit."""
    buf = np.frombuffer(data, np.uint8)
    ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    simplejpeg.decode_jpeg(data, 'BGR', strict=True)  # simplejpeg's own path, not the fallback
    out = decode_full_scale(data)
    assert out.shape == ref.shape and out.dtype == np.uint8 and out.flags['C_CONTIGUOUS']
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('name', ['truncated', 'not_a_jpeg'])
def test_full_scale_decode_falls_back_to_opencv(name):
    """What simplejpeg refuses, OpenCV decodes (or not) as the reference does."""
    photo = photo_like(200, 150, np.random.default_rng(4))
    data = {
        'truncated': _jpeg(photo)[:2000],
        'not_a_jpeg': b'not an image',
    }[name]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(data, 'BGR', strict=True)
    buf = np.frombuffer(data, np.uint8)
    ref, out = cv2.imdecode(buf, cv2.IMREAD_COLOR), decode_full_scale(data)
    assert (out is None) == (ref is None)
    if ref is not None:
        np.testing.assert_array_equal(out, ref)


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
