"""The training pipeline as one transform, with faster routes behind one switch."""

import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from mmcv.transforms import BaseTransform, LoadImageFromFile, RandomFlip
from mmengine import fileio
from mmpretrain.datasets.transforms import RandAugment, RandomResizedCrop

from mmdeit.registry import TRANSFORMS

from .exact_crop import crop_resize, random_resized_crop
from .exact_load import exact_loadable, load_image
from .fast_randaugment import fast_randaugment
from .fast_route import decode_crop_resize, flip

logger = logging.getLogger(__name__)


@TRANSFORMS.register_module()
class TrainPipeline(BaseTransform):
    """A list of transforms run in order, with faster routes behind one switch.

    With ``fast_pipeline=False`` this is ``Compose(transforms)``: the reference objects, as
    mmpretrain runs them. With ``fast_pipeline='exact'`` the output is the reference's bit for
    bit, through faster kernels for four of its steps (the shipped recipes' default):

    - mmcv's ``LoadImageFromFile`` (OpenCV, colour) decodes a JPEG without an EXIF rotation
      through simplejpeg (the same libjpeg-turbo call, OpenCV's pixels; ``exact_load.py``);
    - mmpretrain's ``RandomResizedCrop`` (pillow backend) copies the crop to a contiguous
      array before PIL's resize (``exact_crop.py``: Pillow is slow on strided arrays);
    - ``RandomFlip`` flips with ``cv2.flip`` (a contiguous copy, not a strided view);
    - ``RandAugment``'s point operations are lookup tables computed by the reference's own
      arithmetic (``fast_randaugment.py``).

    With ``fast_pipeline=True`` (see ``fast_route.py``) the pixels may differ within stated
    bounds, for more speed: the exact route's flip and RandAugment, and
    ``LoadImageFromFile`` + ``RandomResizedCrop`` (pillow backend) as one step: the crop box
    is drawn by the same ``RandomResizedCrop`` (from the JPEG header's size), the JPEG is
    decoded by libjpeg-turbo (the reference's decoder; at full scale through simplejpeg, same
    pixels) at the smallest DCT scale (1, 1/2, 1/4, 1/8) at which the crop still covers the
    output, and at full scale the crop is resized by torch's antialiased uint8 kernel instead
    of PIL's.

    Every other transform (random erasing, ...) is the reference object itself.

    Every draw is made by the reference objects' own methods in their order, so the numpy RNG
    stream, the crop boxes, flips and RandAugment draws are the reference's. Pixels: the
    resize differs from PIL's by at most 2 grey levels where the JPEG is decoded at full scale
    (most 500x375 photos); at a reduced scale libjpeg's scaled IDCT does the first part of
    the shrink and PIL resizes the box in the reduced image's (fractional) coordinates
    (``docs/benchmarks.md`` has the measured bound). Files other than JPEGs without an EXIF
    rotation are decoded at full scale, after which the box is drawn, as the reference does.

    Args:
        transforms: Transform configs (or built transforms), in order.
        fast_pipeline: ``False`` (the reference objects), ``'exact'`` (the reference's
            output through faster kernels) or ``True`` (the fast route). Defaults to False.

    Raises:
        TypeError: naming the field, when ``fast_pipeline`` is neither a bool nor a string.
        ValueError: naming the field, when it is a string other than ``'exact'``; with
            ``fast_pipeline=True``, when the first two transforms are not a default
            ``LoadImageFromFile`` and a pillow ``RandomResizedCrop``.
    """

    def __init__(self, transforms: Sequence, fast_pipeline: Union[bool, str] = False) -> None:
        if not (isinstance(fast_pipeline, bool) or fast_pipeline == 'exact'):
            error = ValueError if isinstance(fast_pipeline, str) else TypeError
            raise error(
                f"TrainPipeline.fast_pipeline must be False, 'exact' or True, got {fast_pipeline!r}"
            )
        self.transforms: List[BaseTransform] = [
            t if callable(t) else TRANSFORMS.build(t) for t in transforms
        ]
        self.fast_pipeline = fast_pipeline
        if fast_pipeline is True:
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
        if self.fast_pipeline is False:
            for t in self.transforms:
                if results is None:
                    return None
                results = t(results)
            return results
        transforms = self.transforms
        if self.fast_pipeline is True:
            results, transforms = self._load_and_crop(results), transforms[2:]
        for t in transforms:
            if results is None:
                return None
            results = self._exact(t, results)
        return results

    @staticmethod
    def _exact(t: BaseTransform, results: dict) -> Optional[dict]:
        """``t(results)``, through a faster kernel with the same output where there is one."""
        if type(t) is LoadImageFromFile and exact_loadable(t):
            return load_image(t, results)
        if type(t) is RandomFlip and not any(k.startswith('gt_') for k in results):
            return flip(t, results)
        if type(t) is RandAugment:
            return fast_randaugment(t, results)
        if (
            type(t) is RandomResizedCrop
            and t.backend == 'pillow'
            and results['img'].dtype == np.uint8
        ):
            return random_resized_crop(t, results)
        return t(results)

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
        results['img'] = crop_resize(results['img'], box, crop.scale, crop.interpolation)
        results['img_shape'] = results['img'].shape
        return results

    def __repr__(self) -> str:
        inner = ''.join(f'\n    {t}' for t in self.transforms)
        return f'{type(self).__name__}(fast_pipeline={self.fast_pipeline},{inner}\n)'
