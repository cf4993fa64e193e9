"""Convert DeiT checkpoints between the official, timm, HF transformers and mmdeit layouts.

Pure functions on state dicts (no file I/O); ``tools/model_converters/deit_to_mmdeit.py`` is the
command-line front end. Every source is first brought to the mmdeit classifier layout, which is
mmpretrain 1.2's: ``backbone.*`` for :class:`mmdeit.models.DistilledVisionTransformer` and
``head.layers.head.*`` / ``head.layers.head_dist.*`` for the ``DeiTClsHead``.

Formats (what :func:`detect_format` returns):

* ``'official'``: facebookresearch/deit release, ``{'model': <timm keys>}``.
* ``'timm'``: a timm state dict (``blocks.N.norm1``, ``mlp.fc1``, ``head``, ``head_dist``, ...),
  bare or under ``'state_dict'``.
* ``'hf'``: HF transformers ``DeiT*`` (``deit.encoder.layer.N...``, separate query/key/value,
  ``cls_classifier``, ``distillation_classifier``) or the ``ViT*`` models HF uses for the
  non-distilled DeiT (``vit.`` prefix, ``classifier``).
* ``'mmpretrain'`` / ``'mmdeit'``: already the target layout (passed through).

Non-distilled DeiT (timm/official ``deit_*_patch16_224``, no ``dist_token``) converts to a
cls-only classifier: ``backbone.*`` without ``dist_token`` and ``head.layers.head.*``. Load it
into ``type='mmpretrain.VisionTransformer'`` (same backbone keys, e.g. ``arch='deit-tiny'``) with
a ``VisionTransformerClsHead``; it does not fit ``DistilledVisionTransformer``. HF's
``DeiTForImageClassification`` (distilled backbone, one ``classifier`` on the cls token) gets a
zero ``head_dist`` so that it loads into ``DeiTClsHead``; use ``inference_mode='cls'``.
The converted meta holds a matching ``model_cfg`` (:func:`suggest_model_cfg`).

HF layer norms default to ``eps=1e-12`` whereas timm/mmdeit use 1e-6; the weights convert
exactly, but outputs match only up to that difference unless the HF config sets 1e-6.
"""

import re
from typing import Mapping, Optional, Sequence, Union

import torch

from .hf_checkpoint_convert import HF_MARK, hf_to_mmdeit, mmdeit_to_hf
from .pos_embed import resize_pos_embed
from .state_dict_rename import StateDict, swap_prefix, unknown_keys_error

FORMATS = ('official', 'timm', 'hf', 'mmpretrain', 'mmdeit')
TARGETS = ('mmdeit', 'timm', 'official', 'hf')
#: DeiT heads are 64 channels wide; the weights do not record the number of heads.
HEAD_DIMS = 64

# (timm name, mmdeit name); prefixes, matched on whole dotted components.
_TIMM_TOP = [
    ('cls_token', 'backbone.cls_token'),
    ('dist_token', 'backbone.dist_token'),
    ('pos_embed', 'backbone.pos_embed'),
    ('patch_embed.proj.', 'backbone.patch_embed.projection.'),
    ('norm.', 'backbone.ln1.'),
    ('head_dist.', 'head.layers.head_dist.'),
    ('head.', 'head.layers.head.'),
]
_TIMM_LAYER = [
    ('norm1.', 'ln1.'),
    ('attn.qkv.', 'attn.qkv.'),
    ('attn.proj.', 'attn.proj.'),
    ('norm2.', 'ln2.'),
    ('mlp.fc1.', 'ffn.layers.0.0.'),
    ('mlp.fc2.', 'ffn.layers.1.'),
    ('ls1.gamma', 'attn.gamma1.weight'),
    ('ls2.gamma', 'ffn.gamma2.weight'),
]
_TIMM_MARK = re.compile(r'^blocks\.\d+\.')
_MM_MARK = re.compile(r'^backbone\.layers\.\d+\.')
_BARE_MM_MARK = re.compile(r'^layers\.\d+\.ln1\.')


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the ``module.`` prefix DataParallel/DDP wrappers add to every key."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.') :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _classify_keys(state_dict: Mapping) -> Optional[str]:
    keys = list(state_dict)
    if any(_MM_MARK.match(k) for k in keys) or any(_BARE_MM_MARK.match(k) for k in keys):
        return 'mmpretrain'
    if any(_TIMM_MARK.match(k) for k in keys):
        return 'timm'
    if any(HF_MARK.match(k) for k in keys):
        return 'hf'
    return None


def _is_mmdeit_meta(meta) -> bool:
    return isinstance(meta, Mapping) and (
        'mmdeit_version' in meta or 'mmdeit' in str(meta.get('cfg', ''))
    )


def detect_format(checkpoint: Mapping) -> str:
    """Tell which DeiT layout a loaded checkpoint is in.

    Args:
        checkpoint: What ``torch.load`` returned: a state dict, ``{'model': ...}`` (official) or
            ``{'state_dict': ..., 'meta': ...}`` (mmengine, also timm's train script).

    Returns:
        One of :data:`FORMATS`.

    Raises:
        TypeError: ``checkpoint`` is not a mapping.
        ValueError: the keys match no known layout; the message lists some of them.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'checkpoint must be a dict, got {type(checkpoint).__name__}')
    for wrapper in ('model', 'state_dict'):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            fmt = _classify_keys(strip_module_prefix(inner))
            if fmt == 'timm' and wrapper == 'model':
                return 'official'
            if fmt == 'mmpretrain' and _is_mmdeit_meta(checkpoint.get('meta')):
                return 'mmdeit'
            if fmt is not None:
                return fmt
    fmt = _classify_keys(strip_module_prefix(checkpoint))
    if fmt is None:
        sample = ', '.join(sorted(map(str, checkpoint))[:10])
        raise ValueError(
            f'unknown checkpoint format: expected one of {FORMATS} (official '
            f'{{"model": ...}}, timm "blocks.N.*", HF "deit.[encoder.]layer[s].N.*", '
            f'mmpretrain "backbone.layers.N.*"); its keys are e.g. {sample}'
        )
    return fmt


def extract_state_dict(checkpoint: Mapping) -> StateDict:
    """The state dict inside a loaded checkpoint (under 'model'/'state_dict' or bare)."""
    for wrapper in ('model', 'state_dict'):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping) and _classify_keys(strip_module_prefix(inner)):
            return strip_module_prefix(inner)
    return strip_module_prefix(checkpoint)


def timm_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """timm/official DeiT state dict -> mmdeit classifier state dict (no tensor changes)."""
    out = {}
    unknown = []
    for key, value in state_dict.items():
        match = re.match(r'blocks\.(\d+)\.(.*)$', key)
        if match:
            rest = swap_prefix(match.group(2), _TIMM_LAYER)
            new = None if rest is None else f'backbone.layers.{match.group(1)}.{rest}'
        else:
            new = swap_prefix(key, _TIMM_TOP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise unknown_keys_error(unknown, 'timm')
    return out


def mmdeit_to_timm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmdeit classifier state dict -> timm state dict (the inverse of :func:`timm_to_mmdeit`)."""
    out = {}
    unknown = []
    for key, value in state_dict.items():
        match = re.match(r'backbone\.layers\.(\d+)\.(.*)$', key)
        if match:
            rest = swap_prefix(match.group(2), _TIMM_LAYER, reverse=True)
            new = None if rest is None else f'blocks.{match.group(1)}.{rest}'
        else:
            new = swap_prefix(key, _TIMM_TOP, reverse=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise unknown_keys_error(unknown, 'mmdeit (to timm)')
    return out


def mmpretrain_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmpretrain/mmdeit state dict -> the same; a bare backbone gets the ``backbone.`` prefix."""
    if any(k.startswith('backbone.') for k in state_dict):
        return dict(state_dict)
    return {f'backbone.{k}': v for k, v in state_dict.items()}


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
    """
    out = dict(state_dict)
    pos_embed = out['backbone.pos_embed']
    patch = tuple(out['backbone.patch_embed.projection.weight'].shape[-2:])
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or any(s <= 0 or s % p for s, p in zip(size, patch)):
        raise ValueError(
            f'img_size {img_size!r} must be a positive multiple of the patch size {patch}'
        )
    extra = 2 if 'backbone.dist_token' in out else 1
    num_patches = pos_embed.shape[1] - extra
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(
            f'pos_embed {tuple(pos_embed.shape)} is not {extra} extra tokens plus a square grid'
        )
    dst = (size[0] // patch[0], size[1] // patch[1])
    out['backbone.pos_embed'] = resize_pos_embed(pos_embed, (side, side), dst, mode, extra)
    return out


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Model settings readable from an mmdeit state dict (``num_heads`` assumes 64-dim heads).

    Returns:
        dict with ``distilled``, ``arch`` (embed_dims, num_layers, num_heads,
        feedforward_channels), ``patch_size``, ``img_size``, ``num_classes`` (None when the
        checkpoint has no head) and ``qkv_bias``.
    """
    embed_dims = int(state_dict['backbone.cls_token'].shape[-1])
    layers = {
        int(m.group(1)) for k in state_dict if (m := re.match(r'backbone\.layers\.(\d+)\.', k))
    }
    patch = int(state_dict['backbone.patch_embed.projection.weight'].shape[-1])
    distilled = 'backbone.dist_token' in state_dict
    num_patches = state_dict['backbone.pos_embed'].shape[1] - (2 if distilled else 1)
    head = state_dict.get('head.layers.head.weight')
    return dict(
        distilled=distilled,
        arch=dict(
            embed_dims=embed_dims,
            num_layers=len(layers),
            num_heads=max(1, embed_dims // HEAD_DIMS),
            feedforward_channels=int(state_dict['backbone.layers.0.ffn.layers.0.0.weight'].shape[0])
            if layers
            else 0,
        ),
        patch_size=patch,
        img_size=int(round(num_patches**0.5)) * patch,
        num_classes=None if head is None else int(head.shape[0]),
        qkv_bias='backbone.layers.0.attn.qkv.bias' in state_dict,
    )


def suggest_model_cfg(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """A classifier config that loads an mmdeit state dict strictly.

    A distilled checkpoint gets ``mmdeit.DistilledVisionTransformer`` + ``mmdeit.DeiTClsHead``
    (with ``inference_mode='cls'`` when ``head_dist`` is all zeros, i.e. filled in for a source
    that only had a cls classifier); a cls-only one ``mmpretrain.VisionTransformer`` +
    ``mmpretrain.VisionTransformerClsHead``. ``num_heads`` assumes 64-dim heads, as in DeiT.
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
    return dict(type='mmpretrain.ImageClassifier', backbone=backbone, neck=None, head=head)


def to_mmdeit(checkpoint: Mapping, fmt: Optional[str] = None) -> StateDict:
    """Any supported checkpoint -> mmdeit classifier state dict.

    Args:
        checkpoint: What ``torch.load`` returned.
        fmt: Source format, one of :data:`FORMATS`; detected when None. Defaults to None.
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
    """
    if to not in TARGETS:
        raise ValueError(f'to must be one of {TARGETS}, got {to!r}')
    source = detect_format(checkpoint) if fmt is None else fmt
    state_dict = to_mmdeit(checkpoint, source)
    if img_size is not None:
        state_dict = resize_checkpoint_pos_embed(state_dict, img_size)
    if to == 'timm':
        return mmdeit_to_timm(state_dict)
    if to == 'official':
        return {'model': mmdeit_to_timm(state_dict)}
    if to == 'hf':
        return mmdeit_to_hf(state_dict, hf_layout)
    old_meta = checkpoint.get('meta') if source in ('mmpretrain', 'mmdeit') else None
    meta = dict(old_meta) if isinstance(old_meta, Mapping) else {}
    import mmdeit  # here, not at the top: this module is imported while mmdeit loads

    meta.update(
        converted_from=source,
        mmdeit_version=mmdeit.__version__,
        model_cfg=suggest_model_cfg(state_dict),
        **infer_arch(state_dict),
    )
    return {'meta': meta, 'state_dict': state_dict}
