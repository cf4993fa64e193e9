"""DeiT backbone: a ViT with a distillation token."""

from typing import Tuple

import torch

from mmdeit.registry import MODELS

from .vision_transformer import VisionTransformer


@MODELS.register_module()
class DistilledVisionTransformer(VisionTransformer):
    """Distilled Vision Transformer, the DeiT backbone.

    From `Training data-efficient image transformers & distillation through attention
    <https://arxiv.org/abs/2012.12877>`_. A ``dist_token`` follows the ``cls_token``; the tokens
    are laid out as ``[cls, dist, patches...]`` (B, N+2, C). The constructor and state_dict keys
    are mmpretrain 1.2's, so its checkpoints load strictly; unlike it, ``pre_norm`` is applied,
    ``frozen_stages`` also freezes ``dist_token`` and ``.train()`` returns the module.

    With ``out_type='cls_token'`` each output is a pair ``(cls, dist)`` of (B, C) tensors;
    the other out types are those of :class:`VisionTransformer`. See it for the arguments;
    ``arch`` defaults to 'deit-base'.
    """

    extra_tokens = ('cls_token', 'dist_token')

    def __init__(self, arch='deit-base', *args, **kwargs):
        super().__init__(arch, *args, **kwargs)

    def _format_output(self, x: torch.Tensor, hw: Tuple[int, int]):
        if self.out_type == 'cls_token':
            return x[:, 0], x[:, 1]  # (B, C), (B, C)
        return super()._format_output(x, hw)
