"""The teacher's view of the student's batch: another input size and normalisation."""

import math
from numbers import Real
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

#: The ``interpolation`` values of ``teacher_input`` (modes of ``F.interpolate``).
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'area')

_KEYS = ('size', 'mean', 'std', 'interpolation')


def _check_size(size) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ValueError(f'teacher_input.size must be a pair (H, W) of positive ints, got {size!r}')
    return int(size[0]), int(size[1])


def _check_values(name: str, values, channels: int) -> Optional[List[float]]:
    if values is None:
        return None
    if (
        not isinstance(values, (tuple, list))
        or len(values) != channels
        or not all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    ):
        raise ValueError(
            f'teacher_input.{name} must be a list of {channels} numbers (one per channel, as '
            f"the data_preprocessor's mean/std), got {values!r}"
        )
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values) or (name == 'std' and min(values) <= 0):
        what = 'finite positive numbers' if name == 'std' else 'finite numbers'
        raise ValueError(f'teacher_input.{name} must hold {what}, got {values!r}')
    return values


def student_normalisation(data_preprocessor: nn.Module) -> Tuple[List[float], List[float]]:
    """The mean and std (one per channel, 0-255 scale) the data preprocessor normalises with.

    A preprocessor that does not normalise (``ClsDataPreprocessor`` without ``mean``) leaves
    pixel values: mean 0 and std 1 (three channels).
    """
    mean = getattr(data_preprocessor, 'mean', None)
    std = getattr(data_preprocessor, 'std', None)
    enabled = getattr(data_preprocessor, '_enable_normalize', mean is not None)
    if not enabled or not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return [0.0] * 3, [1.0] * 3
    return mean.flatten().tolist(), std.flatten().tolist()


class TeacherInput:
    """Turns the student's input batch into the teacher's: resize, then re-normalise.

    The student's batch (after the data preprocessor and the batch augments) is normalised
    with the preprocessor's mean/std; the teacher's is resized to ``size`` and normalised with
    its own: ``teacher = (resize(student) * std_s + mean_s - mean_t) / std_t``. Both
    normalisations are in the 0-255 scale and in the channel order the preprocessor outputs
    (RGB with ``to_rgb=True``: ``ClsDataPreprocessor`` flips BGR to RGB before normalising,
    so its own mean/std are RGB too; otherwise the loaded order, BGR for mmcv's
    ``LoadImageFromFile``). The channels are never reordered: the teacher must have been
    trained with that channel order. The resize is per-channel linear with weights summing to
    one, so it commutes with the per-channel affine map and is done first on the smaller grid
    where that is cheaper.

    It is a plain object, not a module: it adds nothing to the student's ``state_dict``.

    Args:
        cfg: ``dict(size=(H, W), mean=[...], std=[...], interpolation='bilinear')``; each key
            is optional: ``size`` None keeps the student's size, ``mean``/``std`` None keep
            the student's, ``interpolation`` (one of :data:`INTERPOLATIONS`) defaults to
            'bilinear'.
        student_mean: The student's per-channel mean (0-255 scale).
        student_std: The student's per-channel std (0-255 scale).

    Raises:
        TypeError: ``cfg`` is not a dict.
        ValueError: An unknown key or a bad value; the message names the field.
    """

    def __init__(self, cfg: dict, student_mean: Sequence[float], student_std: Sequence[float]):
        if not isinstance(cfg, dict):
            raise TypeError(
                'teacher_input must be a dict(size=(H, W), mean=[...], std=[...], '
                f"interpolation='bilinear') or None, got {type(cfg).__name__}"
            )
        unknown = sorted(set(cfg) - set(_KEYS))
        if unknown:
            raise ValueError(f'teacher_input has unknown keys {unknown}; allowed: {_KEYS}')
        channels = len(student_mean)
        self.size = _check_size(cfg.get('size'))
        self.interpolation = cfg.get('interpolation', 'bilinear')
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f'teacher_input.interpolation must be one of {INTERPOLATIONS}, '
                f'got {self.interpolation!r}'
            )
        mean = _check_values('mean', cfg.get('mean'), channels)
        std = _check_values('std', cfg.get('std'), channels)
        self.student_mean = [float(v) for v in student_mean]
        self.student_std = [float(v) for v in student_std]
        self.mean = self.student_mean if mean is None else mean
        self.std = self.student_std if std is None else std
        # teacher = x * scale + shift, in float64 here, cast once per device and dtype.
        self._scale = [s / t for s, t in zip(self.student_std, self.std)]
        self._shift = [(m - n) / t for m, n, t in zip(self.student_mean, self.mean, self.std)]
        self.renormalises = self._scale != [1.0] * channels or self._shift != [0.0] * channels
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def __deepcopy__(self, memo: dict) -> 'TeacherInput':
        return self  # immutable but for its per-device cache: a copied model (EMA) shares it

    def _affine(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (x.device, x.dtype)
        if key not in self._cache:
            shape = (1, len(self._scale), 1, 1)
            scale = torch.tensor(self._scale, dtype=torch.float64).view(shape)
            shift = torch.tensor(self._shift, dtype=torch.float64).view(shape)
            self._cache[key] = (scale.to(x.device, x.dtype), shift.to(x.device, x.dtype))
        return self._cache[key]

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's batch (B, C, H_t, W_t) from the student's (B, C, H, W).

        Elementwise operations and ``F.interpolate`` keep the input's memory format, so a
        channels-last batch stays channels-last.
        """
        if inputs.dim() != 4 or inputs.size(1) != len(self._scale):
            raise ValueError(
                f'teacher_input expects the student batch (B, {len(self._scale)}, H, W), got '
                f'{tuple(inputs.shape)}'
            )
        resize = self.size is not None and tuple(inputs.shape[-2:]) != self.size
        shrinks = resize and self.size[0] * self.size[1] <= inputs.size(-2) * inputs.size(-1)
        if resize and shrinks:
            inputs = self._resize(inputs)
        if self.renormalises:
            scale, shift = self._affine(inputs)
            inputs = torch.addcmul(shift, inputs, scale)
        if resize and not shrinks:
            inputs = self._resize(inputs)
        return inputs

    def _resize(self, inputs: torch.Tensor) -> torch.Tensor:
        align = dict(align_corners=False) if self.interpolation in ('bilinear', 'bicubic') else {}
        return F.interpolate(inputs, size=self.size, mode=self.interpolation, **align)

    def __repr__(self) -> str:
        return (
            f'TeacherInput(size={self.size}, mean={self.mean}, std={self.std}, '
            f'interpolation={self.interpolation!r})'
        )


def check_teacher_size(teacher: nn.Module, size: Tuple[int, int]) -> bool:
    """Check that ``teacher`` can take images of ``size``, where that can be told.

    It can be told for ViT-like teachers, found by a submodule named ``patch_embed`` (mmdeit,
    mmpretrain and timm): the size must be divisible by the patch size (the stride of its
    ``projection`` / ``proj`` convolution), and equal a timm ``PatchEmbed``'s ``img_size`` when
    that is strict. Convnets take any size large enough, which is not checked.

    Returns:
        True if the size was checked, False if it cannot be told.

    Raises:
        ValueError: The teacher cannot take ``size``.
    """
    for name, module in teacher.named_modules():
        if name.split('.')[-1] != 'patch_embed':
            continue
        conv = getattr(module, 'projection', None) or getattr(module, 'proj', None)
        if not isinstance(conv, nn.Conv2d):
            continue
        patch = tuple(conv.stride)
        if size[0] % patch[0] or size[1] % patch[1]:
            raise ValueError(
                f'teacher_input.size {size} is not divisible by the patch size {patch} of the '
                f"teacher's {name}"
            )
        img_size = getattr(module, 'img_size', None)
        if getattr(module, 'strict_img_size', False) and img_size is not None:
            if tuple(img_size) != tuple(size):
                raise ValueError(
                    f"teacher_input.size {size} differs from the teacher's {name}.img_size "
                    f'{tuple(img_size)}, which it requires (strict_img_size)'
                )
        return True
    return False
