"""The training pipeline as one transform, with a fast route behind one switch."""

import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np
from mmcv.transforms import BaseTransform, RandomFlip
from mmengine import fileio
from mmpretrain.datasets.transforms import RandAugment
from PIL import Image

from mmdeit.registry import TRANSFORMS

from .fast_randaugment import fast_randaugment
from .fast_route import decode_crop_resize, flip

logger = logging.getLogger(__name__)


@TRANSFORMS.register_module()
class TrainPipeline(BaseTransform):
    """A list of transforms run in order, with a fast route behind one switch.

    With ``fast_pipeline=False`` this is ``Compose(transforms)``: the reference. With
    ``fast_pipeline=True`` (see ``fast_route.py`` and ``fast_randaugment.py``):

    - ``LoadImageFromFile`` + ``RandomResizedCrop`` (pillow backend) become one step: the crop
      box is drawn by the same ``RandomResizedCrop`` (from the JPEG header's size), the JPEG
      is decoded by OpenCV (the reference's decoder) at the smallest DCT scale (1, 1/2, 1/4,
      1/8) at which the crop still covers the output, and at full scale the crop is resized
      by torch's antialiased uint8 kernel instead of PIL's;
    - ``RandomFlip`` flips with ``cv2.flip`` (a contiguous copy, not a strided view);
    - ``RandAugment``'s point operations are lookup tables computed by the reference's own
      arithmetic (the same pixels); its other operations are the reference objects;
    - every other transform (random erasing, ...) is the reference object itself.

    Every draw is made by the reference objects' own methods in their order, so the numpy RNG
    stream, the crop boxes, flips and RandAugment draws are the reference's. Pixels: the
    resize differs from PIL's by at most 2 grey levels where the JPEG is decoded at full scale
    (most 500x375 photos); at a reduced scale libjpeg's scaled IDCT does the first part of
    the shrink and the box is rounded to the reduced pixels (``docs/benchmarks.md`` has the
    measured bound). Files other than JPEGs without an EXIF rotation are decoded at full
    scale, after which the box is drawn, as the reference does.

    Args:
        transforms: Transform configs (or built transforms), in order.
        fast_pipeline: Take the fast route. Defaults to False (the reference).

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
        if not self.fast_pipeline:
            for t in self.transforms:
                if results is None:
                    return None
                results = t(results)
            return results
        results = self._load_and_crop(results)
        for t in self.transforms[2:]:
            if results is None:
                return None
            if type(t) is RandomFlip and not any(k.startswith('gt_') for k in results):
                results = flip(t, results)
            elif type(t) is RandAugment:
                results = fast_randaugment(t, results)
            else:
                results = t(results)
        return results

    def _load_and_crop(self, results: dict) -> Optional[dict]:
        load, crop = self.transforms[:2]
        try:
            data = fileio.get(results['img_path'], backend_args=load.backend_args)
        except Exception:  # the reference reads it, or raises its error
            return self._reference_load_and_crop(results)
        img, ori_shape, box = decode_crop_resize(data, crop)
        if img is None:
            return self._reference_load_and_crop(results, box)
        results['img'] = img
        results['ori_shape'] = ori_shape
        results['img_shape'] = img.shape  # as mmpretrain's RandomResizedCrop sets it
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
