"""HF transformers DeiT/ViT state dicts <-> mmdeit.

HF keeps separate query/key/value projections (stacked into mmdeit's fused ``attn.qkv``), names
the two classifiers ``cls_classifier`` and ``distillation_classifier`` (``classifier`` in the
cls-only models) and prefixes the backbone with ``deit.`` (``vit.`` for the ``ViT*`` models HF
uses for the non-distilled DeiT; nothing for a bare ``DeiTModel``).

HF layer norms default to ``eps=1e-12`` whereas timm/mmdeit use 1e-6; the weights convert
exactly, but outputs match only up to that difference unless the HF config sets 1e-6.
"""

import re
from typing import Dict, List, Mapping

import torch
from mmengine.logging import MMLogger

from .detect import HF_MARK
from .rename import KeyTable, StateDict, rename_keys

#: (HF name without the 'deit.'/'vit.' prefix, mmdeit name); see :mod:`.rename`.
HF_TOP: KeyTable = [
    ('embeddings.cls_token', 'backbone.cls_token'),
    ('embeddings.distillation_token', 'backbone.dist_token'),
    ('embeddings.position_embeddings', 'backbone.pos_embed'),
    ('embeddings.patch_embeddings.projection.', 'backbone.patch_embed.projection.'),
    ('layernorm.', 'backbone.ln1.'),
]
#: Per-layer names of transformers >= 5 modules ('v5') and of older releases and the files on
#: the Hub ('legacy'), which transformers 5 renames on ``from_pretrained``. ``attn.q/k/v`` are
#: stand-ins for the three thirds of mmdeit's fused ``attn.qkv``.
HF_LAYER: Dict[str, KeyTable] = {
    'v5': [
        ('layers.{}.layernorm_before.', 'backbone.layers.{}.ln1.'),
        ('layers.{}.attention.q_proj.', 'backbone.layers.{}.attn.q.'),
        ('layers.{}.attention.k_proj.', 'backbone.layers.{}.attn.k.'),
        ('layers.{}.attention.v_proj.', 'backbone.layers.{}.attn.v.'),
        ('layers.{}.attention.o_proj.', 'backbone.layers.{}.attn.proj.'),
        ('layers.{}.layernorm_after.', 'backbone.layers.{}.ln2.'),
        ('layers.{}.mlp.fc1.', 'backbone.layers.{}.ffn.layers.0.0.'),
        ('layers.{}.mlp.fc2.', 'backbone.layers.{}.ffn.layers.1.'),
    ],
    'legacy': [
        ('encoder.layer.{}.layernorm_before.', 'backbone.layers.{}.ln1.'),
        ('encoder.layer.{}.attention.attention.query.', 'backbone.layers.{}.attn.q.'),
        ('encoder.layer.{}.attention.attention.key.', 'backbone.layers.{}.attn.k.'),
        ('encoder.layer.{}.attention.attention.value.', 'backbone.layers.{}.attn.v.'),
        ('encoder.layer.{}.attention.output.dense.', 'backbone.layers.{}.attn.proj.'),
        ('encoder.layer.{}.layernorm_after.', 'backbone.layers.{}.ln2.'),
        ('encoder.layer.{}.intermediate.dense.', 'backbone.layers.{}.ffn.layers.0.0.'),
        ('encoder.layer.{}.output.dense.', 'backbone.layers.{}.ffn.layers.1.'),
    ],
}
HF_LAYOUTS = tuple(HF_LAYER)
#: Classifiers (not under the model prefix): with a teacher, and cls-token only.
HF_HEADS_DISTILLED: KeyTable = [
    ('cls_classifier.', 'head.layers.head.'),
    ('distillation_classifier.', 'head.layers.head_dist.'),
]
HF_HEADS_CLS: KeyTable = [('classifier.', 'head.layers.head.')]
#: ``DeiTForMaskedImageModeling`` / ``ViTForMaskedImageModeling`` (SimMIM): the mask token of the
#: encoder (under the model prefix) and the decoder's 1x1 conv (not), into mmdeit's
#: ``DeiTSimMIM`` (``MaskedDistilledVisionTransformer`` + mmpretrain's ``SimMIMLinearDecoder``).
HF_MIM_TOKEN: KeyTable = [('embeddings.mask_token', 'backbone.mask_token')]
HF_MIM_DECODER: KeyTable = [('decoder.0.', 'neck.decoder.0.')]
#: HF extras that an mmdeit classifier has no counterpart for (under the model prefix); the mask
#: token is kept when the state dict has the masked-image-modeling decoder.
HF_DROPPED = ('embeddings.mask_token', 'pooler.')
ZERO_DIST = ('head.layers.head_dist.weight', 'head.layers.head_dist.bias')
_QKV_KEY = re.compile(
    r'(?P<base>backbone\.layers\.(?P<layer>\d+)\.attn\.)(?P<part>q|k|v|qkv)\.(?P<kind>weight|bias)$'
)


def _table(prefix: str, layouts: List[str], heads: KeyTable, mim: bool = False) -> KeyTable:
    body = HF_TOP + [entry for layout in layouts for entry in HF_LAYER[layout]]
    body += HF_MIM_TOKEN if mim else []
    return [(prefix + hf, mm) for hf, mm in body] + list(heads) + (HF_MIM_DECODER if mim else [])


def _model_prefix(state_dict: Mapping) -> str:
    """'deit.', 'vit.' or '' (a bare ``DeiTModel``), read from the first layer norm's key."""
    for key in state_dict:
        match = HF_MARK.match(key)
        if match:
            return match.group(1) or ''
    raise ValueError('not an HF DeiT/ViT state dict: no "layers.N.layernorm_before" keys')


def _fuse_qkv(state_dict: StateDict) -> StateDict:
    """Stack each layer's ``attn.q/k/v`` into ``attn.qkv`` (in that order), where q was."""
    out, parts = {}, {}
    for key, value in state_dict.items():
        match = _QKV_KEY.match(key)
        if match is None or match.group('part') == 'qkv':
            out[key] = value
            continue
        fused = f'{match.group("base")}qkv.{match.group("kind")}'
        out.setdefault(fused, None)  # keeps the layer's key order; filled in below
        parts.setdefault(fused, {})[match.group('part')] = value
    for fused, found in parts.items():
        if len(found) != 3:
            layer, kind = _QKV_KEY.match(fused).group('layer', 'kind')
            raise ValueError(f'HF layer {layer} has only {len(found)} of query/key/value {kind}')
        out[fused] = torch.cat([found['q'], found['k'], found['v']], dim=0)  # (3C, C) / (3C,)
    return out


def _split_qkv(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Split each layer's fused ``attn.qkv`` into ``attn.q/k/v`` (the inverse of the above)."""
    out = {}
    for key, value in state_dict.items():
        match = _QKV_KEY.match(key)
        if match is None or match.group('part') != 'qkv':
            out[key] = value
            continue
        for part, chunk in zip('qkv', value.chunk(3, dim=0)):
            out[f'{match.group("base")}{part}.{match.group("kind")}'] = chunk.clone()  # (C, C)/(C,)
    return out


def hf_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """HF transformers DeiT/ViT state dict -> mmdeit classifier state dict.

    Reads both the transformers >= 5 names (``layers.N.attention.q_proj``, ``mlp.fc1``) and the
    older ones used by the files on the Hub (``encoder.layer.N.attention.attention.query``,
    ``intermediate.dense``). The separate query/key/value projections of each layer are stacked
    in that order into mmdeit's fused ``attn.qkv``. A masked-image-modeling model (SimMIM:
    ``DeiTForMaskedImageModeling``, ``ViTForMaskedImageModeling``, recognised by its
    ``decoder.0``) maps to :class:`~mmdeit.models.DeiTSimMIM`: ``embeddings.mask_token`` to
    ``backbone.mask_token``, ``decoder.0.*`` to ``neck.decoder.0.*`` (HF's DeiT decoder reads
    the tokens shifted by one patch, mmdeit's does not: docs/simmim.md). Otherwise
    ``embeddings.mask_token`` and ``pooler.*`` have no counterpart and are dropped with a
    warning. ``DeiTForImageClassification`` (one
    ``classifier``, on the cls token, over a distilled backbone) gets a zero ``head_dist``, so it
    loads into ``DeiTClsHead``, to be used with ``inference_mode='cls'``.

    Raises:
        ValueError: Not an HF DeiT/ViT state dict, unknown keys, or a layer lacks one of
            query/key/value.
    """
    prefix = _model_prefix(state_dict)
    mim = 'decoder.0.weight' in state_dict  # DeiT/ViTForMaskedImageModeling: keep the mask token
    drop = tuple(prefix + name for name in HF_DROPPED if not (mim and 'mask_token' in name))
    dropped = [k for k in state_dict if k.startswith(drop)]
    table = _table(prefix, list(HF_LAYOUTS), HF_HEADS_DISTILLED + HF_HEADS_CLS, mim)
    out = _fuse_qkv(rename_keys(state_dict, table, 'HF', drop=drop))
    logger = MMLogger.get_current_instance()
    if dropped:
        logger.warning(f'Dropped HF keys with no mmdeit counterpart: {dropped}')
    cls_only = 'head.layers.head.weight' in out and 'head.layers.head_dist.weight' not in out
    if 'backbone.dist_token' in out and cls_only:
        # DeiTForImageClassification: a distilled backbone with a cls-token classifier only.
        for kind in ('weight', 'bias'):
            out[f'head.layers.head_dist.{kind}'] = torch.zeros_like(out[f'head.layers.head.{kind}'])
        logger.warning(
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
    :func:`hf_to_mmdeit`) maps back to ``DeiTForImageClassification`` (``classifier``). A
    ``DeiTSimMIM`` (``backbone.mask_token``, ``neck.decoder.0.*``) maps to
    ``DeiTForMaskedImageModeling`` (``ViTForMaskedImageModeling`` without a dist token). The
    fused ``attn.qkv`` is split into query/key/value.

    Args:
        state_dict: mmdeit classifier state dict.
        layout: 'legacy' for the module names of transformers 4 and of the files on the Hub
            (which transformers 5 renames in ``from_pretrained``), 'v5' for those of
            transformers >= 5 modules (for their ``load_state_dict``). Defaults to 'legacy'.

    Raises:
        ValueError: Unknown ``layout``, or keys with no HF counterpart (e.g. a neck).
    """
    if layout not in HF_LAYOUTS:
        raise ValueError(f'layout must be one of {HF_LAYOUTS}, got {layout!r}')
    distilled = 'backbone.dist_token' in state_dict
    zero_dist = [k for k in ZERO_DIST if k in state_dict and not state_dict[k].any()]
    # A zero head_dist is dropped only when the whole head (weight and bias) is zero, i.e. the
    # model maps to the cls-only classifier; a trained one keeps an exactly-zero bias.
    drop_dist = not distilled or len(zero_dist) == 2
    heads = HF_HEADS_CLS if drop_dist else HF_HEADS_DISTILLED
    mim = 'backbone.mask_token' in state_dict
    table = _table('deit.' if distilled else 'vit.', [layout], heads, mim)
    drop = zero_dist if drop_dist else []
    return rename_keys(_split_qkv(state_dict), table, 'mmdeit (to HF)', reverse=True, drop=drop)
