"""Key mapping between HF transformers DeiT/ViT state dicts and mmdeit's classifier layout.

HF keeps separate query/key/value projections (stacked into mmdeit's fused ``attn.qkv``), names
the two classifiers ``cls_classifier`` and ``distillation_classifier`` (``classifier`` in the
cls-only models) and prefixes the backbone with ``deit.`` (``vit.`` for the ``ViT*`` models HF
uses for the non-distilled DeiT). Used through :mod:`.checkpoint_convert`.
"""

import re
from typing import Mapping, Optional, Tuple

import torch
from mmengine.logging import MMLogger

from .state_dict_rename import StateDict, swap_prefix, unknown_keys_error

HF_MARK = re.compile(r'^(deit\.|vit\.)?(encoder\.layer|layers)\.\d+\.layernorm_before\.')
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
# Per-layer names of transformers >= 5 (``layers.N.``) and of older releases and the files on
# the Hub (``encoder.layer.N.``), which transformers 5 renames on ``from_pretrained``.
_HF_LAYER = {
    'v5': [
        ('layernorm_before.', 'ln1.'),
        ('attention.o_proj.', 'attn.proj.'),
        ('layernorm_after.', 'ln2.'),
        ('mlp.fc1.', 'ffn.layers.0.0.'),
        ('mlp.fc2.', 'ffn.layers.1.'),
    ],
    'legacy': [
        ('layernorm_before.', 'ln1.'),
        ('attention.output.dense.', 'attn.proj.'),
        ('layernorm_after.', 'ln2.'),
        ('intermediate.dense.', 'ffn.layers.0.0.'),
        ('output.dense.', 'ffn.layers.1.'),
    ],
}
_HF_QKV = {
    'v5': ('attention.q_proj', 'attention.k_proj', 'attention.v_proj'),
    'legacy': ('attention.attention.query', 'attention.attention.key', 'attention.attention.value'),
}
_HF_LAYER_PREFIX = {'v5': 'layers.{}.', 'legacy': 'encoder.layer.{}.'}
_HF_LAYER_RE = {
    'v5': re.compile(r'layers\.(\d+)\.(.*)$'),
    'legacy': re.compile(r'encoder\.layer\.(\d+)\.(.*)$'),
}
HF_LAYOUTS = tuple(_HF_LAYER)
# Parameter-free HF extras that mmdeit has no counterpart for.
_HF_DROPPED = ('embeddings.mask_token', 'pooler.')


def _hf_prefix(state_dict: Mapping) -> str:
    for key in state_dict:
        match = HF_MARK.match(key)
        if match:
            return match.group(1) or ''
    raise ValueError('not an HF DeiT/ViT state dict: no "layers.N.layernorm_before" keys')


def _hf_layer_key(name: str) -> Optional[Tuple[str, str, str]]:
    """(layout, layer index, rest) of an HF per-layer key, without the model prefix."""
    for layout, pattern in _HF_LAYER_RE.items():
        match = pattern.match(name)
        if match:
            return layout, match.group(1), match.group(2)
    return None


def hf_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """HF transformers DeiT/ViT state dict -> mmdeit classifier state dict.

    Reads both the transformers >= 5 names (``layers.N.attention.q_proj``, ``mlp.fc1``) and the
    older ones used by the files on the Hub (``encoder.layer.N.attention.attention.query``,
    ``intermediate.dense``). The separate query/key/value projections of each layer are stacked
    in that order into mmdeit's fused ``attn.qkv``. ``embeddings.mask_token`` and ``pooler.*``
    have no counterpart and are dropped with a warning. ``DeiTForImageClassification`` (one
    ``classifier``, on the cls token, over a distilled backbone) gets a zero ``head_dist``, so it
    loads into ``DeiTClsHead``, to be used with ``inference_mode='cls'``.
    """
    prefix = _hf_prefix(state_dict)
    out, qkv, unknown, dropped = {}, {}, [], []
    for key, value in state_dict.items():
        name = key[len(prefix) :] if key.startswith(prefix) else key
        layer_key = _hf_layer_key(name)
        if layer_key:
            layout, layer, rest = layer_key
            part, _, kind = rest.rpartition('.')
            if part in _HF_QKV[layout]:
                qkv.setdefault((layer, kind), {})[_HF_QKV[layout].index(part)] = value
                continue
            new_rest = swap_prefix(rest, _HF_LAYER[layout])
            new = None if new_rest is None else f'backbone.layers.{layer}.{new_rest}'
        else:
            new = swap_prefix(name, _HF_TOP) if key.startswith(prefix) else None
            new = new or swap_prefix(key, _HF_HEADS)
        if new is not None:
            out[new] = value
        elif name.startswith(_HF_DROPPED):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise unknown_keys_error(unknown, 'HF')
    if dropped:
        MMLogger.get_current_instance().warning(
            f'Dropped HF keys with no mmdeit counterpart: {dropped}'
        )
    for (layer, kind), parts in sorted(qkv.items()):
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f'HF layer {layer} has only {len(parts)} of query/key/value {kind}')
        out[f'backbone.layers.{layer}.attn.qkv.{kind}'] = torch.cat(
            [parts[i] for i in range(3)], dim=0
        )  # (3C, C) or (3C,)
    if (
        'backbone.dist_token' in out
        and 'head.layers.head.weight' in out
        and 'head.layers.head_dist.weight' not in out
    ):
        # DeiTForImageClassification: a distilled backbone with a cls-token classifier only.
        for kind in ('weight', 'bias'):
            out[f'head.layers.head_dist.{kind}'] = torch.zeros_like(out[f'head.layers.head.{kind}'])
        MMLogger.get_current_instance().warning(
            'The HF model classifies the cls token only: added a zero head_dist; load it into '
            "DeiTClsHead with inference_mode='cls'."
        )
    return out


def mmdeit_to_hf(state_dict: Mapping[str, torch.Tensor], layout: str = 'legacy') -> StateDict:
    """mmdeit classifier state dict -> HF transformers state dict.

    A distilled model maps to ``DeiTForImageClassificationWithTeacher`` (``deit.`` prefix,
    ``cls_classifier``, ``distillation_classifier``), a cls-only one to
    ``ViTForImageClassification`` (``vit.`` prefix, ``classifier``), which is how HF ships the
    non-distilled DeiT. A distilled model whose ``head_dist`` is all zeros (see
    :func:`hf_to_mmdeit`) maps back to ``DeiTForImageClassification`` (``classifier``). The
    fused ``attn.qkv`` is split into query/key/value.

    Args:
        state_dict: mmdeit classifier state dict.
        layout: 'legacy' for the module names of transformers 4 and of the files on the Hub
            (which transformers 5 renames in ``from_pretrained``), 'v5' for those of
            transformers >= 5 modules (for their ``load_state_dict``). Defaults to 'legacy'.
    """
    if layout not in HF_LAYOUTS:
        raise ValueError(f'layout must be one of {HF_LAYOUTS}, got {layout!r}')
    distilled = 'backbone.dist_token' in state_dict
    prefix = 'deit.' if distilled else 'vit.'
    zero_dist = [
        k
        for k in ('head.layers.head_dist.weight', 'head.layers.head_dist.bias')
        if k in state_dict and not state_dict[k].any()
    ]
    # A zero head_dist is dropped only when the whole head (weight and bias) is zero, i.e. the
    # model maps to the cls-only classifier; a trained one keeps an exactly-zero bias.
    drop_dist = not distilled or len(zero_dist) == 2
    heads = _HF_HEADS[2:] if drop_dist else _HF_HEADS[:2]
    out, unknown = {}, []
    for key, value in state_dict.items():
        if drop_dist and key in zero_dist:
            continue
        match = re.match(r'backbone\.layers\.(\d+)\.(.*)$', key)
        if match:
            layer, rest = match.groups()
            base = prefix + _HF_LAYER_PREFIX[layout].format(layer)
            qkv_match = re.match(r'attn\.qkv\.(weight|bias)$', rest)
            if qkv_match:
                for part, chunk in zip(_HF_QKV[layout], value.chunk(3, dim=0)):
                    out[f'{base}{part}.{qkv_match.group(1)}'] = chunk.clone()  # (C, C) / (C,)
                continue
            new_rest = swap_prefix(rest, _HF_LAYER[layout], reverse=True)
            new = None if new_rest is None else base + new_rest
        elif key.startswith('backbone.'):
            new = swap_prefix(key, _HF_TOP, reverse=True)
            new = None if new is None else prefix + new
        else:
            new = swap_prefix(key, heads, reverse=True)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise unknown_keys_error(unknown, 'mmdeit (to HF)')
    return out
