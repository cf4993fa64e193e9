"""What an mmdeit state dict's shapes tell: the architecture, a config that loads it, and a
position embedding resized to another input size."""

import re
from typing import Mapping, Sequence, Union

import torch

from mmdeit.models.utils.pos_embed import pos_embed_grid, resize_pos_embed

from .rename import StateDict

#: DeiT heads are 64 channels wide; the weights do not record the number of heads.
HEAD_DIMS = 64
_LAYER = re.compile(r'backbone\.layers\.(\d+)\.')


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Model settings readable from an mmdeit state dict (``num_heads`` assumes 64-dim heads).

    Returns:
        dict with ``distilled``, ``arch`` (embed_dims, num_layers, num_heads,
        feedforward_channels), ``patch_size``, ``img_size``, ``num_classes`` (None when the
        checkpoint has no head) and ``qkv_bias``.

    Raises:
        ValueError: ``backbone.pos_embed`` is not a square patch grid.
    """
    embed_dims = int(state_dict['backbone.cls_token'].shape[-1])
    layers = {int(m.group(1)) for k in state_dict if (m := _LAYER.match(k))}
    ffn = state_dict['backbone.layers.0.ffn.layers.0.0.weight'] if layers else None
    patch = int(state_dict['backbone.patch_embed.projection.weight'].shape[-1])
    distilled = 'backbone.dist_token' in state_dict
    grid_h, _ = pos_embed_grid(
        state_dict['backbone.pos_embed'], 2 if distilled else 1, 'backbone.pos_embed'
    )
    head = state_dict.get('head.layers.head.weight')
    return dict(
        distilled=distilled,
        arch=dict(
            embed_dims=embed_dims,
            num_layers=len(layers),
            num_heads=max(1, embed_dims // HEAD_DIMS),
            feedforward_channels=0 if ffn is None else int(ffn.shape[0]),
        ),
        patch_size=patch,
        img_size=grid_h * patch,
        num_classes=None if head is None else int(head.shape[0]),
        qkv_bias='backbone.layers.0.attn.qkv.bias' in state_dict,
    )


def suggest_model_cfg(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """A classifier config that loads an mmdeit state dict strictly.

    A distilled checkpoint gets ``mmdeit.DistilledVisionTransformer`` + ``mmdeit.DeiTClsHead``
    (with ``inference_mode='cls'`` when ``head_dist`` is all zeros, i.e. filled in for a source
    that only had a cls classifier, and with ``teacher_num_classes`` when ``head_dist`` has
    another class count than ``head``); a cls-only one ``mmpretrain.VisionTransformer`` +
    ``mmpretrain.VisionTransformerClsHead``; a SimMIM one (``neck.decoder.0.*``)
    ``mmdeit.DeiTSimMIM``. ``num_heads`` assumes 64-dim heads, as in DeiT.
    """
    info = infer_arch(state_dict)
    distilled = info['distilled']
    backbone = dict(
        type='mmdeit.DistilledVisionTransformer' if distilled else 'mmpretrain.VisionTransformer',
        arch=info['arch'],
        img_size=info['img_size'],
        patch_size=info['patch_size'],
    )
    if not info['qkv_bias']:
        backbone['qkv_bias'] = False
    if 'neck.decoder.0.weight' in state_dict:  # SimMIM: mask token + linear decoder
        return _simmim_cfg(backbone, distilled, info['arch']['embed_dims'], info['patch_size'])
    head = None
    if info['num_classes'] is not None:
        head = dict(
            type='mmdeit.DeiTClsHead' if distilled else 'mmpretrain.VisionTransformerClsHead',
            num_classes=info['num_classes'],
            in_channels=info['arch']['embed_dims'],
        )
        head_dist = state_dict.get('head.layers.head_dist.weight')
        if distilled and head_dist is not None and not head_dist.any():
            head['inference_mode'] = 'cls'
        if distilled and head_dist is not None and head_dist.shape[0] != info['num_classes']:
            # A student of a teacher with another label space: the cls head predicts.
            head.update(teacher_num_classes=head_dist.shape[0], inference_mode='cls')
    return dict(type='mmpretrain.ImageClassifier', backbone=backbone, neck=None, head=head)


def _simmim_cfg(backbone: dict, distilled: bool, embed_dims: int, patch: int) -> dict:
    """The ``mmdeit.DeiTSimMIM`` that loads a SimMIM state dict (HF's masked image modeling)."""
    masked = 'MaskedDistilledVisionTransformer' if distilled else 'MaskedVisionTransformer'
    backbone.update(type=f'mmdeit.{masked}', out_type='featmap')
    loss = dict(type='mmpretrain.PixelReconstructionLoss', criterion='L1', channel=3)
    return dict(
        type='mmdeit.DeiTSimMIM',
        backbone=backbone,
        neck=dict(
            type='mmpretrain.SimMIMLinearDecoder', in_channels=embed_dims, encoder_stride=patch
        ),
        head=dict(type='mmpretrain.SimMIMHead', patch_size=patch, loss=loss),
    )


def resize_checkpoint_pos_embed(
    state_dict: Mapping[str, torch.Tensor],
    img_size: Union[int, Sequence[int]],
    mode: str = 'bicubic',
) -> StateDict:
    """Resize ``backbone.pos_embed`` of an mmdeit state dict to another input size.

    Uses :func:`mmdeit.models.utils.resize_pos_embed` (``align_corners=False``, no antialias, as
    the official DeiT fine-tuning at 384 and mmpretrain do; timm's checkpoint filter uses
    antialias and so differs slightly). The patch size is read from the patch projection.

    Args:
        state_dict: mmdeit classifier state dict.
        img_size: Target input size, an int or (H, W); multiples of the patch size.
        mode: Interpolation mode. Defaults to 'bicubic'.

    Returns:
        A new state dict whose ``backbone.pos_embed`` fits ``img_size``.

    Raises:
        ValueError: ``img_size`` is not a multiple of the patch size, or ``backbone.pos_embed``
            is not a square patch grid.
    """
    out = dict(state_dict)
    patch = tuple(out['backbone.patch_embed.projection.weight'].shape[-2:])
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(s <= 0 or s % p for s, p in zip(size, patch)):
        raise ValueError(
            f'img_size {img_size!r} must be a positive multiple of the patch size {patch}'
        )
    extra = 2 if 'backbone.dist_token' in out else 1
    src = pos_embed_grid(out['backbone.pos_embed'], extra, 'backbone.pos_embed')
    dst = (size[0] // patch[0], size[1] // patch[1])
    out['backbone.pos_embed'] = resize_pos_embed(out['backbone.pos_embed'], src, dst, mode, extra)
    return out
