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
a ``VisionTransformerClsHead``; it does not fit ``DistilledVisionTransformer``.

HF layer norms default to ``eps=1e-12`` whereas timm/mmdeit use 1e-6; the weights convert
exactly, but outputs match only up to that difference unless the HF config sets 1e-6.
"""

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MMLogger

from .pos_embed import resize_pos_embed

StateDict = Dict[str, torch.Tensor]
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
# (HF name without the 'deit.'/'vit.' prefix, mmdeit name); q/k/v are handled apart.
_HF_TOP = [
    ('embeddings.cls_token', 'backbone.cls_token'),
    ('embeddings.distillation_token', 'backbone.dist_token'),
    ('embeddings.position_embeddings', 'backbone.pos_embed'),
    ('embeddings.patch_embeddings.projection.', 'backbone.patch_embed.projection.'),
    ('layernorm.', 'backbone.ln1.'),
]
_HF_HEADS = [
    ('cls_classifier.', 'head.layers.head.'),
    ('distillation_classifier.', 'head.layers.head_dist.'),
    ('classifier.', 'head.layers.head.'),
]
_HF_LAYER = [
    ('layernorm_before.', 'ln1.'),
    ('attention.output.dense.', 'attn.proj.'),
    ('layernorm_after.', 'ln2.'),
    ('intermediate.dense.', 'ffn.layers.0.0.'),
    ('output.dense.', 'ffn.layers.1.'),
]
_HF_QKV = ('query', 'key', 'value')
# Parameter-free HF extras that mmdeit has no counterpart for.
_HF_DROPPED = ('embeddings.mask_token', 'pooler.')

_TIMM_MARK = re.compile(r'^blocks\.\d+\.')
_HF_MARK = re.compile(r'^(deit\.|vit\.)?encoder\.layer\.\d+\.')
_MM_MARK = re.compile(r'^backbone\.layers\.\d+\.')
_BARE_MM_MARK = re.compile(r'^layers\.\d+\.ln1\.')


def _swap_prefix(key: str, table: Sequence[Tuple[str, str]], reverse: bool = False):
    """Rename ``key`` by the first matching prefix of ``table``; None when nothing matches."""
    for src, dst in table:
        if reverse:
            src, dst = dst, src
        if src.endswith('.') and key.startswith(src):
            return dst + key[len(src):]
        if key == src:
            return dst
    return None


def _unknown(keys: List[str], what: str) -> ValueError:
    sample = ', '.join(sorted(keys)[:8])
    return ValueError(f'{len(keys)} keys of the {what} state dict have no known counterpart, '
                      f'e.g. {sample}')


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the ``module.`` prefix DataParallel/DDP wrappers add to every key."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _classify_keys(state_dict: Mapping) -> Optional[str]:
    keys = list(state_dict)
    if any(_MM_MARK.match(k) for k in keys) or any(_BARE_MM_MARK.match(k) for k in keys):
        return 'mmpretrain'
    if any(_TIMM_MARK.match(k) for k in keys):
        return 'timm'
    if any(_HF_MARK.match(k) for k in keys):
        return 'hf'
    return None


def _is_mmdeit_meta(meta) -> bool:
    return isinstance(meta, Mapping) and (
        'mmdeit_version' in meta or 'mmdeit' in str(meta.get('cfg', '')))


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
        raise ValueError(f'unknown checkpoint format: expected one of {FORMATS} (official '
                         f'{{"model": ...}}, timm "blocks.N.*", HF "deit.encoder.layer.N.*", '
                         f'mmpretrain "backbone.layers.N.*"); its keys are e.g. {sample}')
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
            rest = _swap_prefix(match.group(2), _TIMM_LAYER)
            new = None if rest is None else f'backbone.layers.{match.group(1)}.{rest}'
        else:
            new = _swap_prefix(key, _TIMM_TOP)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise _unknown(unknown, 'timm')
    return out


def mmdeit_to_timm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmdeit classifier state dict -> timm state dict (the inverse of :func:`timm_to_mmdeit`)."""
    out = {}
    unknown = []
    for key, value in state_dict.items():
        match = re.match(r'backbone\.layers\.(\d+)\.(.*)$', key)
        if match:
            rest = _swap_prefix(match.group(2), _TIMM_LAYER, reverse=True)
            new = None if rest is None else f'blocks.{match.group(1)}.{rest}'
        else:
            new = _swap_prefix(key, _TIMM_TOP, reverse=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise _unknown(unknown, 'mmdeit (to timm)')
    return out


def _hf_prefix(state_dict: Mapping) -> str:
    for key in state_dict:
        match = _HF_MARK.match(key)
        if match:
            return match.group(1) or ''
    raise ValueError('not an HF DeiT/ViT state dict: no "encoder.layer.N." keys')


def hf_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """HF transformers DeiT/ViT state dict -> mmdeit classifier state dict.

    The separate ``query``/``key``/``value`` projections of each layer are stacked (in that
    order) into mmdeit's fused ``attn.qkv``. ``embeddings.mask_token`` and ``pooler.*`` have no
    counterpart and are dropped with a warning.
    """
    prefix = _hf_prefix(state_dict)
    out, qkv, unknown, dropped = {}, {}, [], []
    for key, value in state_dict.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        match = re.match(r'encoder\.layer\.(\d+)\.(.*)$', name)
        if match:
            layer, rest = match.groups()
            qkv_match = re.match(r'attention\.attention\.(query|key|value)\.(weight|bias)$', rest)
            if qkv_match:
                qkv.setdefault((layer, qkv_match.group(2)), {})[qkv_match.group(1)] = value
                continue
            new_rest = _swap_prefix(rest, _HF_LAYER)
            new = None if new_rest is None else f'backbone.layers.{layer}.{new_rest}'
        else:
            new = _swap_prefix(name, _HF_TOP) if key.startswith(prefix) else None
            new = new or _swap_prefix(key, _HF_HEADS)
        if new is not None:
            out[new] = value
        elif name.startswith(_HF_DROPPED):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(unknown, 'HF')
    if dropped:
        MMLogger.get_current_instance().warning(f'Dropped HF keys with no mmdeit counterpart: '
                                                f'{dropped}')
    for (layer, kind), parts in qkv.items():
        missing = [p for p in _HF_QKV if p not in parts]
        if missing:
            raise ValueError(f'HF layer {layer} lacks attention {missing} {kind}')
        out[f'backbone.layers.{layer}.attn.qkv.{kind}'] = torch.cat(
            [parts[p] for p in _HF_QKV], dim=0)  # (3C, C) or (3C,)
    return out


def mmdeit_to_hf(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmdeit classifier state dict -> HF transformers state dict.

    A distilled model maps to ``DeiTForImageClassificationWithTeacher`` (``deit.`` prefix,
    ``cls_classifier``, ``distillation_classifier``), a cls-only one to
    ``ViTForImageClassification`` (``vit.`` prefix, ``classifier``), which is how HF ships the
    non-distilled DeiT. The fused ``attn.qkv`` is split into ``query``/``key``/``value``.
    """
    distilled = 'backbone.dist_token' in state_dict
    prefix = 'deit.' if distilled else 'vit.'
    heads = _HF_HEADS[:2] if distilled else _HF_HEADS[2:]
    out, unknown = {}, []
    for key, value in state_dict.items():
        match = re.match(r'backbone\.layers\.(\d+)\.(.*)$', key)
        if match:
            layer, rest = match.groups()
            base = f'{prefix}encoder.layer.{layer}.'
            qkv_match = re.match(r'attn\.qkv\.(weight|bias)$', rest)
            if qkv_match:
                for part, chunk in zip(_HF_QKV, value.chunk(3, dim=0)):
                    out[f'{base}attention.attention.{part}.{qkv_match.group(1)}'] = \
                        chunk.clone()
                continue
            new_rest = _swap_prefix(rest, _HF_LAYER, reverse=True)
            new = None if new_rest is None else base + new_rest
        elif key.startswith('backbone.'):
            new = _swap_prefix(key, _HF_TOP, reverse=True)
            new = None if new is None else prefix + new
        else:
            new = _swap_prefix(key, heads, reverse=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise _unknown(unknown, 'mmdeit (to HF)')
    return out


def mmpretrain_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmpretrain/mmdeit state dict -> the same; a bare backbone gets the ``backbone.`` prefix."""
    if any(k.startswith('backbone.') for k in state_dict):
        return dict(state_dict)
    return {f'backbone.{k}': v for k, v in state_dict.items()}


def resize_checkpoint_pos_embed(state_dict: Mapping[str, torch.Tensor],
                                img_size: Union[int, Sequence[int]],
                                mode: str = 'bicubic') -> StateDict:
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
        raise ValueError(f'img_size {img_size!r} must be a positive multiple of the patch '
                         f'size {patch}')
    extra = 2 if 'backbone.dist_token' in out else 1
    num_patches = pos_embed.shape[1] - extra
    side = int(round(num_patches**0.5))
    if side * side != num_patches:
        raise ValueError(f'pos_embed {tuple(pos_embed.shape)} is not {extra} extra tokens plus '
                         f'a square grid')
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
    layers = {int(m.group(1)) for k in state_dict
              if (m := re.match(r'backbone\.layers\.(\d+)\.', k))}
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
            feedforward_channels=int(state_dict['backbone.layers.0.ffn.layers.0.0.weight']
                                     .shape[0]) if layers else 0),
        patch_size=patch,
        img_size=int(round(num_patches**0.5)) * patch,
        num_classes=None if head is None else int(head.shape[0]),
        qkv_bias='backbone.layers.0.attn.qkv.bias' in state_dict)


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


def convert_checkpoint(checkpoint: Mapping,
                       to: str = 'mmdeit',
                       img_size: Optional[Union[int, Sequence[int]]] = None,
                       fmt: Optional[str] = None) -> dict:
    """Convert a loaded checkpoint to ``to``, resizing ``pos_embed`` on the way if asked.

    Args:
        checkpoint: What ``torch.load`` returned.
        to: Target layout, one of :data:`TARGETS`. 'mmdeit' gives ``{'meta', 'state_dict'}``,
            'official' gives ``{'model': <timm state dict>}``, 'timm' and 'hf' a bare state
            dict. Defaults to 'mmdeit'.
        img_size: Resize the position embedding to this input size. Defaults to None (keep).
        fmt: Source format; detected when None. Defaults to None.

    Returns:
        The converted checkpoint.
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
        return mmdeit_to_hf(state_dict)
    old_meta = checkpoint.get('meta') if source in ('mmpretrain', 'mmdeit') else None
    meta = dict(old_meta) if isinstance(old_meta, Mapping) else {}
    meta.update(converted_from=source, **infer_arch(state_dict))
    return {'meta': meta, 'state_dict': state_dict}
