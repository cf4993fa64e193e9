"""SimMIM with a DeiT / ViT encoder: mmpretrain's algorithm, checked and with a reconstruction."""

from typing import List, Optional

import torch
from mmpretrain.models.selfsup import SimMIM

from mmdeit.registry import MODELS


@MODELS.register_module()
class DeiTSimMIM(SimMIM):
    """SimMIM (Xie et al., 2022) on a ViT / DeiT with a mask token, as HF transformers'
    ``DeiTForMaskedImageModeling``.

    mmpretrain's ``SimMIM`` algorithm (its ``loss``: encoder on the masked image, decoder,
    head loss on the masked pixels), with the parts it has for Swin replaced for DeiT:

    - ``backbone``: :class:`~mmdeit.models.MaskedDistilledVisionTransformer` (or
      :class:`~mmdeit.models.MaskedVisionTransformer`) with ``out_type='featmap'``: the
      patch tokens only, both extra tokens (cls, dist) left out, as a (B, C, H/p, W/p) map;
    - ``neck``: mmpretrain's ``SimMIMLinearDecoder`` with ``encoder_stride`` = the patch size
      (a 1x1 conv to p*p*3 channels and a pixel shuffle, HF's ``decoder``);
    - ``head``: mmpretrain's ``SimMIMHead`` (``patch_size`` = the patch size) with
      ``PixelReconstructionLoss(criterion='L1', channel=3)``: the L1 error summed over the
      masked pixels and channels, divided by the masked pixel count and the channels (HF's
      loss, whose denominator adds 1e-5).

    The mask comes from mmpretrain's ``SimMIMMaskGenerator`` in the pipeline (``model_patch_size``
    = the patch size), as ``data_sample.mask`` (H/p, W/p). HF's decoder reads the tokens
    ``[:, 1:-1]`` (dist token and the first N-1 patches) and so reconstructs every patch from
    its left neighbour's token; here each patch is decoded from its own token (see
    docs/simmim.md). Arguments are those of mmpretrain's ``BaseSelfSupervisor`` (``backbone``,
    ``neck``, ``head`` required here).

    Raises:
        ValueError: The backbone has no mask token or another ``out_type`` than 'featmap', or the
            decoder's ``encoder_stride`` or the head's ``patch_size`` is not the patch size.
    """

    def __init__(self, backbone: dict, neck: dict, head: dict, **kwargs):
        super().__init__(backbone=backbone, neck=neck, head=head, **kwargs)
        name = type(self.backbone).__name__
        if not isinstance(getattr(self.backbone, 'mask_token', None), torch.nn.Parameter):
            raise ValueError(
                f'backbone {name} has no mask token; use type=MaskedDistilledVisionTransformer '
                'or MaskedVisionTransformer'
            )
        if getattr(self.backbone, 'out_type', None) != 'featmap':
            raise ValueError(
                f"backbone.out_type must be 'featmap' (the patch tokens as a map, for the "
                f'decoder), got {getattr(self.backbone, "out_type", None)!r}'
            )
        patch = self.backbone.patch_embed.projection.kernel_size
        stride = self.neck.decoder[1].upscale_factor if hasattr(self.neck, 'decoder') else None
        if stride is not None and (stride, stride) != tuple(patch):
            raise ValueError(f'neck.encoder_stride must be the patch size {patch}, got {stride}')
        head_patch = getattr(self.head, 'patch_size', None)
        if head_patch is not None and (head_patch, head_patch) != tuple(patch):
            raise ValueError(f'head.patch_size must be the patch size {patch}, got {head_patch}')

    def reconstruct(
        self, inputs: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The decoder's image for normalised ``inputs`` (B, 3, H, W) and a patch ``mask``.

        Args:
            inputs: Normalised images (B, 3, H, W), as the data preprocessor gives them.
            mask: Patches to hide, (B, H/p, W/p) or (B, H/p * W/p); None hides nothing.
                Defaults to None.

        Returns:
            The reconstruction (B, 3, H, W), in the normalised space of ``inputs``.
        """
        latent = self.backbone(inputs, mask)[0]  # (B, C, H/p, W/p)
        return self.neck(latent)  # (B, 3, H, W)

    def loss(self, inputs: torch.Tensor, data_samples: List, **kwargs) -> dict:
        """mmpretrain's SimMIM loss; the masks must come from ``SimMIMMaskGenerator``.

        Raises:
            ValueError: A data sample has no ``mask`` (no mask generator in the pipeline).
        """
        if any('mask' not in sample for sample in data_samples):
            raise ValueError(
                'data_samples have no mask: put SimMIMMaskGenerator (model_patch_size = the '
                'patch size) before PackInputs in the train pipeline'
            )
        return super().loss(inputs, data_samples, **kwargs)
