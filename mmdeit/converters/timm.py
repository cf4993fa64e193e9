"""timm DeiT state dicts (and the official release, which has the same keys) <-> mmdeit.

Both sides fuse query/key/value into one ``qkv`` projection, so this is a renaming only; no tensor
is changed.
"""

from typing import Mapping

import torch

from .rename import KeyTable, StateDict, rename_keys

#: (timm name, mmdeit name); see :mod:`.rename` for '.' and '{}'.
TIMM_KEYS: KeyTable = [
    ('cls_token', 'backbone.cls_token'),
    ('dist_token', 'backbone.dist_token'),
    ('pos_embed', 'backbone.pos_embed'),
    ('patch_embed.proj.', 'backbone.patch_embed.projection.'),
    ('blocks.{}.norm1.', 'backbone.layers.{}.ln1.'),
    ('blocks.{}.attn.qkv.', 'backbone.layers.{}.attn.qkv.'),
    ('blocks.{}.attn.proj.', 'backbone.layers.{}.attn.proj.'),
    ('blocks.{}.norm2.', 'backbone.layers.{}.ln2.'),
    ('blocks.{}.mlp.fc1.', 'backbone.layers.{}.ffn.layers.0.0.'),
    ('blocks.{}.mlp.fc2.', 'backbone.layers.{}.ffn.layers.1.'),
    ('blocks.{}.ls1.gamma', 'backbone.layers.{}.attn.gamma1.weight'),
    ('blocks.{}.ls2.gamma', 'backbone.layers.{}.ffn.gamma2.weight'),
    ('norm.', 'backbone.ln1.'),
    ('head_dist.', 'head.layers.head_dist.'),
    ('head.', 'head.layers.head.'),
]


def timm_to_mmdeit(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """timm/official DeiT state dict -> mmdeit classifier state dict (no tensor changes).

    Raises:
        ValueError: Some keys are not DeiT's; the message names them.
    """
    return rename_keys(state_dict, TIMM_KEYS, 'timm')


def mmdeit_to_timm(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """mmdeit classifier state dict -> timm state dict (the inverse of :func:`timm_to_mmdeit`).

    Raises:
        ValueError: Some keys have no timm counterpart (e.g. a neck); the message names them.
    """
    return rename_keys(state_dict, TIMM_KEYS, 'mmdeit (to timm)', reverse=True)
