"""The training pipeline as one transform, with a fast route behind one switch."""

import io
import logging
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmcv.transforms import BaseTransform
from mmengine import fileio
from PIL import Image

from mmdeit.registry import TRANSFORMS

logger = logging.getLogger(__name__)
_EXIF_ORIENTATION = 0x0112
#: DCT scale denominators libjpeg decodes at (PIL's ``Image.draft``), largest first.
_DCT_SCALES = (8, 4, 2, 1)
MARGIN = 1


class _Shape:
    """Stands in for an image array where only ``.shape`` is read (the crop box draw)."""

    def __init__(self, height: int, width: int) -> None:
        self.shape = (height, width, 3)


def dct_scale(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """The largest DCT scale denominator (8, 4, 2 or 1) that keeps the crop at least as large
    as the output in both sides, so the resize after it still only shrinks."""
    for k in _DCT_SCALES:
        if crop_w // k >= MARGIN * out_w and crop_h // k >= MARGIN * out_h:
            return k
    return 1


@TRANSFORMS.register_module()
class TrainPipeline(BaseTransform):
    """A list of transforms run in order, with a fused fast route for its first two.

    With ``fast_pipeline=False`` this is ``Compose(transforms)``: the reference. With
    ``fast_pipeline=True`` a ``LoadImageFromFile`` followed by ``RandomResizedCrop`` (pillow
    backend) becomes one step: the crop box is drawn by the same ``RandomResizedCrop`` object
    (the same numpy draws) from the image's size read from its header, the JPEG is decoded at
    the smallest DCT scale (1, 1/2, 1/4, 1/8; PIL's ``Image.draft``) at which the crop still
    covers the output size, and the crop is resized straight out of the decoded PIL image (no
    full-size numpy copy in between). Every later transform (flip, RandAugment, erasing,
    packing) is the reference object itself, so their draws and pixels are the reference's.

    Pixels: at scale 1 (the crop is smaller than twice the output, e.g. most 500x375 photos)
    the result is the reference's bit for bit; at a reduced scale libjpeg's scaled IDCT
    replaces the first part of the shrink, which changes pixels slightly (see
    ``docs/benchmarks.md`` for the measured bound). Images that are not plain RGB or grey
    JPEG/PNG/... files (CMYK, alpha, palette, 16-bit, an EXIF rotation, a file PIL cannot
    read) take the reference route for the first two steps, with the same draws.

    Args:
        transforms: Transform configs (or built transforms), in order.
        fast_pipeline: Take the fused route. Defaults to False (the reference).

    Raises:
        ValueError: with ``fast_pipeline=True``, naming the field, when the first two
            transforms are not a default ``LoadImageFromFile`` and a pillow
            ``RandomResizedCrop``.
    """

    def __init__(self, transforms: Sequence, fast_pipeline: bool = False) -> None:
        if not isinstance(fast_pipeline, bool):
            raise TypeError(f'TrainPipeline.fast_pipeline must be a bool, got {fast_pipeline!r}')
        self.transforms: List[BaseTransform] = [
            t if callable(t) else TRANSFORMS.build(t) for t in transforms
        ]
        self.fast_pipeline = fast_pipeline
        if fast_pipeline:
            self._check_fusable()

    def _check_fusable(self) -> None:
        names = [type(t).__name__ for t in self.transforms[:2]]
        if names != ['LoadImageFromFile', 'RandomResizedCrop']:
            raise ValueError(
                'TrainPipeline.fast_pipeline=True needs transforms to start with '
                f'LoadImageFromFile, RandomResizedCrop; got {names}'
            )
        load, crop = self.transforms[:2]
        problems = []
        if load.color_type != 'color':
            problems.append(f"LoadImageFromFile.color_type={load.color_type!r} (needs 'color')")
        if load.imdecode_backend != 'cv2':
            problems.append(
                f"LoadImageFromFile.imdecode_backend={load.imdecode_backend!r} (needs 'cv2')"
            )
        if load.to_float32:
            problems.append('LoadImageFromFile.to_float32=True (needs False)')
        if crop.backend != 'pillow':
            problems.append(f"RandomResizedCrop.backend={crop.backend!r} (needs 'pillow')")
        if problems:
            raise ValueError('TrainPipeline.fast_pipeline=True: ' + '; '.join(problems))

    def transform(self, results: dict) -> Optional[dict]:
        rest = self.transforms
        if self.fast_pipeline:
            results = self._load_and_crop(results)
            rest = self.transforms[2:]
        for t in rest:
            if results is None:
                return None
            results = t(results)
        return results

    def _open(self, path: str) -> Optional[Image.Image]:
        """The image as PIL opened it (header only), or None where the fused route does not
        give the reference's pixels: not RGB or grey, an EXIF rotation, unreadable."""
        load = self.transforms[0]
        try:
            data = fileio.get(path, backend_args=load.backend_args)
            img = Image.open(io.BytesIO(data))
            if img.mode not in ('RGB', 'L'):
                return None
            if img.format == 'JPEG' and img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return None
            return img
        except Exception:  # the reference route reads it, or raises its error
            return None

    def _load_and_crop(self, results: dict) -> Optional[dict]:
        load, crop = self.transforms[:2]
        img = self._open(results['img_path'])
        if img is None:
            return self._reference_load_and_crop(results)
        width, height = img.size
        top, left, crop_h, crop_w = crop.rand_crop_params(_Shape(height, width))
        out_h, out_w = crop.scale
        k = dct_scale(crop_w, crop_h, out_w, out_h) if img.format == 'JPEG' else 1
        try:
            if k > 1:
                img.draft(img.mode, (width // k, height // k))
            img.load()
        except Exception:  # truncated or corrupt data: the reference decoder decides
            return self._reference_load_and_crop(results, (top, left, crop_h, crop_w))
        box = (left, top, left + crop_w, top + crop_h)
        interp = Image.Resampling[crop.interpolation.upper()]
        if img.size == (width, height):  # exact: crop, then resize the crop alone
            out = img.crop(box).resize((out_w, out_h), interp)
        else:  # decoded at 1/k: the same box in the reduced image's coordinates
            # reduced pixel i is the original pixels [k * i, k * (i + 1)); the last one, when
            # the side is not a multiple of k, is partly padding: the scale is exactly 1/k.
            k = round(width / img.size[0])
            out = img.resize((out_w, out_h), interp, box=tuple(x / k for x in box))
        arr = np.asarray(out)
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.ndim == 3 else cv2.COLOR_GRAY2BGR)
        results['img'] = arr
        results['ori_shape'] = (height, width)
        results['img_shape'] = arr.shape
        return results

    def _reference_load_and_crop(
        self, results: dict, box: Optional[Tuple[int, int, int, int]] = None
    ) -> Optional[dict]:
        """The reference's two steps; ``box`` is the crop already drawn, if it was."""
        load, crop = self.transforms[:2]
        try:
            results = load(results)
        except Exception as err:
            raise OSError(f'cannot read image {results["img_path"]!r}: {err}') from err
        if results is None:  # ignore_empty
            return None
        if box is None:
            return crop(results)
        top, left, crop_h, crop_w = box
        img = results['img'][top : top + crop_h, left : left + crop_w]
        results['img'] = np.asarray(
            Image.fromarray(img).resize(
                crop.scale[::-1], Image.Resampling[crop.interpolation.upper()]
            )
        )
        results['img_shape'] = results['img'].shape
        return results

    def __repr__(self) -> str:
        inner = ''.join(f'\n    {t}' for t in self.transforms)
        return f'{type(self).__name__}(fast_pipeline={self.fast_pipeline},{inner}\n)'
