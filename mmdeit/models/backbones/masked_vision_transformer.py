"""ViT / DeiT backbones with a learnt mask token, for masked image modeling (SimMIM)."""

from typing import Tuple

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmdeit.registry import MODELS

from .distilled_vision_transformer import DistilledVisionTransformer
from .vision_transformer import VisionTransformer


class MaskTokenMixin:
    """Adds a learnt ``mask_token`` that replaces the masked patch embeddings.

    As HF transformers' ``DeiTModel(use_mask_token=True)``: ``forward(x, mask)`` swaps the
    embedding of every patch whose ``mask`` entry is 1 (True) for ``mask_token``, before the
    extra tokens (cls, dist) are prepended and the position embedding is added; the extra
    tokens are never masked. Without a mask (``mask=None``) the forward is the parent's,
    unchanged; a mask of zeros gives the same output as well.

    The mask is ``(B, H, W)`` on the patch grid of the input (what mmpretrain's
    ``SimMIMMaskGenerator`` gives, ``H = img_h // patch_size``) or ``(B, H*W)`` in raster
    order (HF's ``bool_masked_pos``), bool or 0/1 integers.

    The state dict is the parent's plus ``mask_token`` (1, 1, C), so the parent (e.g. a
    fine-tuning backbone) loads a pretrained checkpoint of this one with only ``mask_token``
    unexpected.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))  # (1, 1, C)
        if self.frozen_stages > 0:  # the parent froze its embeddings before this one existed
            self.mask_token.requires_grad = False

    def init_weights(self) -> None:
        super().init_weights()
        if not (isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained'):
            trunc_normal_(self.mask_token, std=0.02)

    def _freeze_stages(self) -> None:
        super()._freeze_stages()
        if 'mask_token' in self._parameters:  # an embedding, frozen with them
            self.mask_token.requires_grad = False

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """As the parent's, with ``mask_token`` at depth 0 (an embedding)."""
        if param_name == f'{prefix}mask_token':
            return 0, self.num_layers + 2
        return super().get_layer_depth(param_name, prefix)

    def _mask_patches(self, x: torch.Tensor, mask: torch.Tensor, hw: Tuple[int, int]):
        """Replace the patch embeddings (B, H*W, C) where ``mask`` is set by ``mask_token``.

        Raises:
            ValueError: ``mask`` is neither (B, H, W) nor (B, H*W) for this input, or holds
                values other than 0 and 1.
        """
        B, L, _ = x.shape
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f'mask must be a torch.Tensor, got {type(mask).__name__}')
        if tuple(mask.shape) not in ((B, *hw), (B, L)):
            raise ValueError(
                f'mask must have shape (B, H, W) = {(B, *hw)} (one entry per patch of this '
                f'input, patch grid {tuple(hw)}) or (B, H*W) = {(B, L)}, got {tuple(mask.shape)}'
            )
        if mask.dtype != torch.bool:
            if ((mask != 0) & (mask != 1)).any():
                raise ValueError('mask must hold only 0 and 1 (or be a bool tensor)')
            mask = mask != 0
        mask = mask.to(x.device).reshape(B, L, 1)  # (B, H*W, 1)
        return torch.where(mask, self.mask_token.to(x.dtype), x)  # (B, H*W, C)


@MODELS.register_module()
class MaskedVisionTransformer(MaskTokenMixin, VisionTransformer):
    """:class:`VisionTransformer` (cls token only) with a mask token; see
    :class:`MaskTokenMixin`. The arguments are :class:`VisionTransformer`'s."""


@MODELS.register_module()
class MaskedDistilledVisionTransformer(MaskTokenMixin, DistilledVisionTransformer):
    """:class:`DistilledVisionTransformer` with a mask token, the encoder of HF's
    ``DeiTForMaskedImageModeling``; see :class:`MaskTokenMixin`. The arguments are
    :class:`DistilledVisionTransformer`'s (``arch`` defaults to 'deit-base')."""
