"""``LoadImageFromFile`` (mmcv's: OpenCV, colour, uint8) with the reference's pixels, faster.

mmcv decodes with ``cv2.imdecode(buf, IMREAD_COLOR)``. A JPEG without an EXIF rotation is
decoded here by the fast route's full-scale decode (simplejpeg's libjpeg-turbo call: OpenCV's
pixels bit for bit, tested; ~0.3 ms less per ImageNet-sized file on one core here). Every
other file (other formats, a rotated JPEG, what neither decoder reads) goes through the
reference object itself, which reads it again, so its result keys, errors and
``ignore_empty`` are mmcv's.
"""

from typing import Optional

from mmcv.transforms import LoadImageFromFile
from mmengine import fileio

from .fast_route import decode_full_scale, jpeg_size


def exact_loadable(load: LoadImageFromFile) -> bool:
    """Whether ``load`` decodes as this module does: colour, OpenCV, uint8, ``backend_args``."""
    return (
        load.color_type == 'color'
        and load.imdecode_backend == 'cv2'
        and not load.to_float32
        and load.file_client_args is None
    )


def load_image(load: LoadImageFromFile, results: dict) -> Optional[dict]:
    """``load(results)`` for a loader that is :func:`exact_loadable`.

    Args:
        load: The reference transform (its backend arguments; its own call for every file
            this module does not decode).
        results: The pipeline's results with ``results['img_path']``.

    Returns:
        ``results`` with ``img`` (H, W, 3) uint8 BGR, ``img_shape`` and ``ori_shape``
        (``(H, W)``), as mmcv sets them; or what ``load(results)`` returns.
    """
    try:
        data = fileio.get(results['img_path'], backend_args=load.backend_args)
    except Exception:  # the reference reads it, or raises (or returns None) as it does
        return load(results)
    img = None
    if jpeg_size(data) is not None:  # a JPEG that decodes as stored: no EXIF rotation
        img = decode_full_scale(data)
    if img is None:
        return load(results)
    results['img'] = img
    results['img_shape'] = img.shape[:2]
    results['ori_shape'] = img.shape[:2]
    return results
