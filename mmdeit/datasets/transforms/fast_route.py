"""The fast route's own steps: decode, crop and resize in one; a flip without a strided copy.

These are what ``TrainPipeline(fast_pipeline=True)`` runs in place of the reference's
``LoadImageFromFile`` + ``RandomResizedCrop`` and ``RandomFlip``. The draws are the reference
objects' own (their methods, in their order), so the numpy RNG stream is the reference's.

- Decode: libjpeg-turbo, as in the reference (OpenCV's ``cv2.imdecode``, ``IMREAD_COLOR``).
  At full scale through simplejpeg's TurboJPEG call (``decode_jpeg(data, 'BGR')``: the same
  library, the same default IDCT and upsampling, the same pixels, tested; ~0.3 ms of ~1.7 ms
  less per ImageNet-sized file here: no EXIF parse or extra copies); a file it refuses (a
  warning such as a truncated scan, under ``strict``) goes to OpenCV, which decodes it or not
  as the reference does. For a JPEG whose crop is at least twice the output on both sides, at
  the smallest DCT scale (1/2, 1/4, 1/8: libjpeg's scaled IDCT, ``IMREAD_REDUCED_COLOR_k``)
  that keeps the crop at least as large as the output. The crop box is drawn from the size in
  the JPEG header, before decoding.
- Resize: at full scale, torch's antialiased uint8 kernel (``F.interpolate(...,
  antialias=True)``: PIL's filters in fixed point, 3-7x faster than PIL's on one core here);
  it differs from PIL's by at most 2 grey levels (more than 1 in ~2 pixels per million,
  measured). At a reduced scale the box is fractional in the reduced image's pixels, which
  PIL's resize takes and torch's does not: PIL resizes there.
- Flip: ``cv2.flip`` (a contiguous copy) where the reference's ``np.flip`` view made every
  later operation copy a negatively strided array first. Same pixels.
"""

import io
from typing import Optional, Tuple

import cv2
import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

_EXIF_ORIENTATION = 0x0112
#: DCT scale denominators libjpeg decodes at, largest first, and OpenCV's flags for them.
_DCT_SCALES = (8, 4, 2, 1)
_IMREAD = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
#: interpolations torch's antialiased kernel has; others resize with PIL (the reference's).
_TORCH_MODES = ('bilinear', 'bicubic')
_FLIP_CODES = {'horizontal': 1, 'vertical': 0, 'diagonal': -1}


class _Shape:
    """Stands in for an image array where only ``.shape`` is read (the crop box draw)."""

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width, 3)


def dct_scale(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """The largest DCT scale denominator (8, 4, 2 or 1) that keeps the crop at least as large
    as the output in both sides, so the resize after it still only shrinks."""
    for k in _DCT_SCALES:
        if crop_w // k >= out_w and crop_h // k >= out_h:
            return k
    return 1


def jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from the header of a JPEG that decodes as stored (no EXIF
    rotation), else None (not a JPEG, rotated, unreadable header)."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.format != 'JPEG':
            return None
        if 'exif' in img.info and img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            return None
        return img.size
    except Exception:  # the reference decoder reads it, or raises its error
        return None


def decode_full_scale(data: bytes) -> Optional[np.ndarray]:
    """``cv2.imdecode(data, cv2.IMREAD_COLOR)`` for a JPEG without an EXIF rotation: through
    simplejpeg where it decodes the file cleanly, else OpenCV's own call (None where it fails)."""
    try:
        return simplejpeg.decode_jpeg(data, 'BGR', strict=True)
    except ValueError:  # a recoverable error (truncated data, ...): the reference's call
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def resize(img: np.ndarray, out_h: int, out_w: int, interpolation: str) -> np.ndarray:
    """Resize an (H, W, C) uint8 image to (out_h, out_w, C), antialiased as PIL does.

    Bilinear and bicubic take torch's uint8 kernel (at most 2 grey levels from PIL's); other
    interpolations take PIL's own.
    """
    if interpolation not in _TORCH_MODES:
        resample = Image.Resampling[interpolation.upper()]
        return np.array(Image.fromarray(img).resize((out_w, out_h), resample))
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]  # (1, C, H, W)
    y = F.interpolate(x, size=(out_h, out_w), mode=interpolation, antialias=True)
    # torch returns (1, C, out_h, out_w) contiguous; every later OpenCV call needs a contiguous
    # (out_h, out_w, C): cv2.merge interleaves the planes (~20x faster than torch's copy here)
    planes = list(y[0].numpy())  # C x (out_h, out_w)
    return cv2.merge(planes).reshape(out_h, out_w, len(planes))  # (out_h, out_w, C)


def decode_crop_resize(data: bytes, crop) -> Tuple[Optional[np.ndarray], tuple, Optional[tuple]]:
    """Decode ``data`` and crop and resize it as ``crop`` (a ``RandomResizedCrop``) would.

    Args:
        data: The file's bytes.
        crop: The reference ``RandomResizedCrop``; its ``rand_crop_params`` draws the box,
            its ``scale`` and ``interpolation`` give the output.

    Returns:
        ``(image (out_h, out_w, 3) uint8 BGR, (height, width) of the file, box)``; the image
        is None where OpenCV cannot decode the data as the header said (the caller falls back
        to the reference, which raises its error, with the box if it was drawn, else None).
    """
    out_h, out_w = crop.scale
    buf = np.frombuffer(data, np.uint8)
    size = jpeg_size(data)
    if size is None:  # decode first, draw from the decoded shape: the reference's order
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if img is None:
            return None, (), None
        (height, width), k = img.shape[:2], 1
        top, left, crop_h, crop_w = box = crop.rand_crop_params(img)
    else:  # draw from the header's size, then decode at the scale the box allows
        width, height = size
        top, left, crop_h, crop_w = box = crop.rand_crop_params(_Shape(height, width))
        k = dct_scale(crop_w, crop_h, out_w, out_h)
        img = decode_full_scale(data) if k == 1 else cv2.imdecode(buf, _IMREAD[k])
        if img is not None and k > 1 and img.shape[:2] != (-(-height // k), -(-width // k)):
            k, img = 1, decode_full_scale(data)  # not libjpeg's scaled size
        if img is None or (k == 1 and img.shape[:2] != (height, width)):
            return None, (height, width), box
    if k == 1:
        patch = img[top : top + crop_h, left : left + crop_w]
        return resize(patch, out_h, out_w, crop.interpolation), (height, width), box
    # reduced pixel i covers the file's pixels [k * i, k * (i + 1)): the same box in the
    # reduced image's coordinates is fractional, which PIL's resize takes (torch's does not)
    resample = Image.Resampling[crop.interpolation.upper()]
    reduced_box = (left / k, top / k, (left + crop_w) / k, (top + crop_h) / k)
    out = Image.fromarray(img).resize((out_w, out_h), resample, box=reduced_box)
    return np.array(out), (height, width), box  # a writable copy


def flip(random_flip, results: dict) -> dict:
    """``random_flip(results)`` (mmcv's ``RandomFlip``) for an image-only ``results``: its own
    draw, ``cv2.flip`` for the pixels."""
    direction = random_flip._choose_direction()
    results['flip'] = direction is not None
    results['flip_direction'] = direction
    if direction is not None:
        results['img'] = cv2.flip(results['img'], _FLIP_CODES[direction])
    return results
