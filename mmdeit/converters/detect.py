"""Which layout a loaded DeiT checkpoint is in, and where its state dict sits.

A layout is recognised by the name of the first norm of a transformer layer:

=================  ===================================================================
layout             key
=================  ===================================================================
official           ``{'model': ...}`` around timm keys (the facebookresearch/deit files)
timm               ``blocks.N.norm1.*`` (bare, or under ``'state_dict'``)
hf                 ``[deit.|vit.]encoder.layer.N.layernorm_before.*`` (transformers 4 and
                   the files on the Hub) or ``[deit.|vit.]layers.N.layernorm_before.*``
                   (transformers >= 5 modules)
mmpretrain         ``backbone.layers.N.*``, or a bare backbone's ``layers.N.ln1.*``
mmdeit             mmpretrain keys in a checkpoint whose ``meta`` was written by mmdeit
=================  ===================================================================
"""

import re
from typing import Mapping, Optional

import torch

from .rename import StateDict

FORMATS = ('official', 'timm', 'hf', 'mmpretrain', 'mmdeit')

TIMM_MARK = re.compile(r'^blocks\.\d+\.')
HF_MARK = re.compile(r'^(deit\.|vit\.)?(encoder\.layer|layers)\.\d+\.layernorm_before\.')
MM_MARK = re.compile(r'^backbone\.layers\.\d+\.')
BARE_MM_MARK = re.compile(r'^layers\.\d+\.ln1\.')
#: Where training scripts put the state dict: the official release and mmengine/timm.
WRAPPERS = ('model', 'state_dict')


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Drop the ``module.`` prefix DataParallel/DDP wrappers add to every key."""
    if state_dict and all(k.startswith('module.') for k in state_dict):
        return {k[len('module.') :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def classify_keys(state_dict: Mapping) -> Optional[str]:
    """'mmpretrain', 'timm' or 'hf' by the keys of a bare state dict; None if none fits."""
    keys = list(state_dict)
    if any(MM_MARK.match(k) or BARE_MM_MARK.match(k) for k in keys):
        return 'mmpretrain'
    if any(TIMM_MARK.match(k) for k in keys):
        return 'timm'
    if any(HF_MARK.match(k) for k in keys):
        return 'hf'
    return None


def _written_by_mmdeit(meta) -> bool:
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
    for wrapper in WRAPPERS:
        inner = checkpoint.get(wrapper)
        if not isinstance(inner, Mapping):
            continue
        fmt = classify_keys(strip_module_prefix(inner))
        if fmt == 'timm' and wrapper == 'model':
            return 'official'
        if fmt == 'mmpretrain' and _written_by_mmdeit(checkpoint.get('meta')):
            return 'mmdeit'
        if fmt is not None:
            return fmt
    fmt = classify_keys(strip_module_prefix(checkpoint))
    if fmt is None:
        sample = ', '.join(sorted(map(str, checkpoint))[:10])
        raise ValueError(
            f'unknown checkpoint format: expected one of {FORMATS} (official '
            f'{{"model": ...}}, timm "blocks.N.*", HF "deit.[encoder.]layer[s].N.*", '
            f'mmpretrain "backbone.layers.N.*"); its keys are e.g. {sample}'
        )
    return fmt


def extract_state_dict(checkpoint: Mapping) -> StateDict:
    """The state dict inside a loaded checkpoint (under 'model'/'state_dict', or bare)."""
    for wrapper in WRAPPERS:
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping) and classify_keys(strip_module_prefix(inner)):
            return strip_module_prefix(inner)
    return strip_module_prefix(checkpoint)
