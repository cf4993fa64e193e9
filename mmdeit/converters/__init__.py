"""Convert DeiT checkpoints between the official, timm, HF transformers and mmdeit layouts.

Pure functions on state dicts (no file I/O); ``tools/model_converters/deit_to_mmdeit.py`` is the
command-line front end. Every source is first brought to the mmdeit classifier layout, which is
mmpretrain 1.2's: ``backbone.*`` for :class:`mmdeit.models.DistilledVisionTransformer` and
``head.layers.head.*`` / ``head.layers.head_dist.*`` for the ``DeiTClsHead``; every target is
made from it.

* :mod:`.detect`: which layout a checkpoint is in (:data:`FORMATS`), where its state dict is.
* :mod:`.timm`: timm and the official release (same keys). :mod:`.hf`: HF transformers.
  mmpretrain checkpoints are already in the target layout and pass through.
* :mod:`.rename`: the key renaming they share. :mod:`.arch`: model settings read from the
  weights, and ``pos_embed`` resizing.

Non-distilled DeiT (timm/official ``deit_*_patch16_224``, no ``dist_token``) converts to a
cls-only classifier: ``backbone.*`` without ``dist_token`` and ``head.layers.head.*``. Load it
into ``type='mmpretrain.VisionTransformer'`` (same backbone keys, e.g. ``arch='deit-tiny'``) with
a ``VisionTransformerClsHead``; it does not fit ``DistilledVisionTransformer``. HF's
``DeiTForImageClassification`` (distilled backbone, one ``classifier`` on the cls token) gets a
zero ``head_dist`` so that it loads into ``DeiTClsHead``; use ``inference_mode='cls'``.
The converted meta holds a matching ``model_cfg`` (:func:`suggest_model_cfg`).
"""

from typing import Mapping, Optional, Sequence, Union

import torch

import mmdeit

from .arch import infer_arch, resize_checkpoint_pos_embed, suggest_model_cfg
from .detect import FORMATS, detect_format, extract_state_dict, strip_module_prefix
from .hf import HF_LAYOUTS, hf_to_mmdeit, mmdeit_to_hf
from .rename import StateDict
from .timm import mmdeit_to_timm, timm_to_mmdeit

TARGETS = ('mmdeit', 'timm', 'official', 'hf')

__all__ = [
    'FORMATS',
    'HF_LAYOUTS',
    'TARGETS',
    'convert_checkpoint',
    'detect_format',
    'extract_state_dict',
    'from_mmdeit',
    'hf_to_mmdeit',
    'infer_arch',
    'mmdeit_to_hf',
    'mmdeit_to_timm',
    'mmpretrain_to_mmdeit',
    'resize_checkpoint_pos_embed',
    'strip_module_prefix',
    'suggest_model_cfg',
    'timm_to_mmdeit',
    'to_mmdeit',
]


def mmpretrain_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmpretrain/mmdeit state dict -> the same; a bare backbone gets the ``backbone.`` prefix."""
    if any(k.startswith('backbone.') for k in state_dict):
        return dict(state_dict)
    return {f'backbone.{k}': v for k, v in state_dict.items()}


def to_mmdeit(checkpoint: Mapping, fmt: Optional[str] = None) -> StateDict:
    """Any supported checkpoint -> mmdeit classifier state dict.

    Args:
        checkpoint: What ``torch.load`` returned.
        fmt: Source format, one of :data:`FORMATS`; detected when None. Defaults to None.

    Raises:
        ValueError: Unknown ``fmt``, an undetectable layout, or keys the layout does not know.
    """
    fmt = detect_format(checkpoint) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    state_dict = extract_state_dict(checkpoint)
    if fmt in ('official', 'timm'):
        return timm_to_mmdeit(state_dict)
    if fmt == 'hf':
        return hf_to_mmdeit(state_dict)
    return mmpretrain_to_mmdeit(state_dict)


def from_mmdeit(state_dict: Mapping[str, torch.Tensor], to: str, hf_layout: str = 'legacy') -> dict:
    """mmdeit classifier state dict -> a foreign layout (the reverse of :func:`to_mmdeit`).

    Args:
        state_dict: mmdeit classifier state dict.
        to: 'timm' (a bare state dict), 'official' (``{'model': <timm state dict>}``) or 'hf'.
        hf_layout: Key layout when ``to='hf'``, see :func:`mmdeit_to_hf`. Defaults to 'legacy'.

    Raises:
        ValueError: Unknown ``to``, or keys with no counterpart in that layout.
    """
    if to == 'timm':
        return mmdeit_to_timm(state_dict)
    if to == 'official':
        return {'model': mmdeit_to_timm(state_dict)}
    if to == 'hf':
        return mmdeit_to_hf(state_dict, hf_layout)
    raise ValueError(f"to must be one of ('timm', 'official', 'hf'), got {to!r}")


def convert_checkpoint(
    checkpoint: Mapping,
    to: str = 'mmdeit',
    img_size: Optional[Union[int, Sequence[int]]] = None,
    fmt: Optional[str] = None,
    hf_layout: str = 'legacy',
) -> dict:
    """Convert a loaded checkpoint to ``to``, resizing ``pos_embed`` on the way if asked.

    Args:
        checkpoint: What ``torch.load`` returned.
        to: Target layout, one of :data:`TARGETS`. 'mmdeit' gives ``{'meta', 'state_dict'}``,
            'official' gives ``{'model': <timm state dict>}``, 'timm' and 'hf' a bare state
            dict. Defaults to 'mmdeit'.
        img_size: Resize the position embedding to this input size. Defaults to None (keep).
        fmt: Source format; detected when None. Defaults to None.
        hf_layout: Key layout when ``to='hf'``, see :func:`mmdeit_to_hf`. Defaults to 'legacy'.

    Returns:
        The converted checkpoint; for 'mmdeit' its meta records the source format, the
        ``mmdeit_version``, what :func:`infer_arch` reads from the weights and a
        ``model_cfg`` from :func:`suggest_model_cfg`.

    Raises:
        ValueError: Unknown ``to`` or ``fmt``, keys a layout does not know, or a bad ``img_size``.
    """
    if to not in TARGETS:
        raise ValueError(f'to must be one of {TARGETS}, got {to!r}')
    source = detect_format(checkpoint) if fmt is None else fmt
    state_dict = to_mmdeit(checkpoint, source)
    if img_size is not None:
        state_dict = resize_checkpoint_pos_embed(state_dict, img_size)
    if to != 'mmdeit':
        return from_mmdeit(state_dict, to, hf_layout)
    old_meta = checkpoint.get('meta') if source in ('mmpretrain', 'mmdeit') else None
    meta = dict(old_meta) if isinstance(old_meta, Mapping) else {}
    meta.update(
        converted_from=source,
        mmdeit_version=mmdeit.__version__,
        model_cfg=suggest_model_cfg(state_dict),
        **infer_arch(state_dict),
    )
    return {'meta': meta, 'state_dict': state_dict}
