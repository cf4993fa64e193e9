"""ViTDet-style simple feature pyramid for a single-scale (plain ViT / DeiT) feature map."""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule

from mmdeit.registry import MODELS

#: Allowed rescaling factors and the channels of the rescaled map, as a fraction of the input's.
_SCALE_CHANNEL_DIVISORS = {4.0: 4, 2.0: 2, 1.0: 1, 0.5: 1}


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Simple feature pyramid of ViTDet (Li et al., ECCV 2022) for plain ViT / DeiT backbones.

    A plain ViT has one feature map at stride ``p`` (the patch size). Following `Exploring Plain
    Vision Transformer Backbones for Object Detection <https://arxiv.org/abs/2203.16527>`_, the
    pyramid is built from that single map, with no top-down path:

    - scale 4: two stride-2 transposed convs (C -> C/2 -> C/4) with a norm and GELU between;
    - scale 2: one stride-2 transposed conv (C -> C/2);
    - scale 1: the map itself (C);
    - scale 0.5: 2x2 max-pooling (C).

    Each rescaled map goes through a 1x1 lateral conv and a 3x3 output conv (both with
    ``norm_cfg`` and ``act_cfg``) to ``out_channels``. Levels beyond ``len(scale_factors)``
    (up to ``num_outs``) are stride-2 subsamplings of the last output (1x1 max-pool, as
    mmdet's ``FPN`` does for Mask R-CNN). With patch size 16 and the defaults, the outputs have
    strides 4, 8, 16, 32 and 64: what mmdet's RPN / RoI heads expect.

    Norm types are looked up in mmdeit's registry (which falls back to mmpretrain's and
    mmengine's), so the default ``'LN2d'`` works whatever the default scope (mmdet, mmseg) is.

    Args:
        in_channels: Channels C of the backbone feature map (``embed_dims``).
        out_channels: Channels of every output level. Defaults to 256.
        scale_factors: Rescaling factors of the backbone map, strictly decreasing, each one of
            4, 2, 1, 0.5. Defaults to (4.0, 2.0, 1.0, 0.5).
        num_outs: Number of output levels, at least ``len(scale_factors)``. Defaults to 5.
        in_index: Which entry of the backbone's output tuple to use. Defaults to -1.
        norm_cfg: Norm after every conv and inside the scale-4 branch (a 2d norm that takes
            (B, C, H, W); use 'LN2d', not 'LN'), or None for no norm (then the convs have a
            bias). Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg: Activation after the lateral and output convs, or None. Defaults to None.
        init_cfg: Initialization config; None keeps mmcv's ``ConvModule`` init (Kaiming) and
            PyTorch's for the transposed convs. Defaults to None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        num_outs: int = 5,
        in_index: int = -1,
        norm_cfg: Optional[dict] = dict(type='LN2d', eps=1e-6),
        act_cfg: Optional[dict] = None,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        for name, value in (('in_channels', in_channels), ('out_channels', out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TypeError(f'{name} must be a positive int, got {value!r}')
        self.scale_factors = self._check_scale_factors(scale_factors)
        if 4.0 in self.scale_factors and in_channels % 4:
            raise ValueError(
                f'in_channels must be divisible by 4 for scale factor 4 (the '
                f'branch has C/2 and C/4 channels), got {in_channels}'
            )
        if 2.0 in self.scale_factors and in_channels % 2:
            raise ValueError(
                f'in_channels must be divisible by 2 for scale factor 2, got {in_channels}'
            )
        if (
            isinstance(num_outs, bool)
            or not isinstance(num_outs, int)
            or num_outs < len(self.scale_factors)
        ):
            raise ValueError(
                f'num_outs must be an int >= len(scale_factors)='
                f'{len(self.scale_factors)}, got {num_outs!r}'
            )
        if isinstance(in_index, bool) or not isinstance(in_index, int):
            raise TypeError(f'in_index must be an int, got {in_index!r}')
        if act_cfg is not None and not (isinstance(act_cfg, dict) and 'type' in act_cfg):
            raise TypeError(f'act_cfg must be None or a dict with a "type" key, got {act_cfg!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.in_index = in_index
        norm_cfg = self._resolve_norm_cfg(norm_cfg)

        self.rescales = nn.ModuleList()
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for scale in self.scale_factors:
            self.rescales.append(self._build_rescale(scale, in_channels, norm_cfg))
            level_channels = in_channels // _SCALE_CHANNEL_DIVISORS[scale]
            self.lateral_convs.append(
                ConvModule(
                    level_channels,
                    out_channels,
                    1,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False,
                )
            )
            self.output_convs.append(
                ConvModule(
                    out_channels,
                    out_channels,
                    3,
                    padding=1,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False,
                )
            )

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_scale_factors(scale_factors: Sequence[float]) -> Tuple[float, ...]:
        allowed = tuple(_SCALE_CHANNEL_DIVISORS)
        if (
            isinstance(scale_factors, (int, float))
            or not isinstance(scale_factors, Sequence)
            or not scale_factors
        ):
            raise TypeError(
                f'scale_factors must be a non-empty sequence of numbers from '
                f'{allowed}, got {scale_factors!r}'
            )
        parsed = []
        for scale in scale_factors:
            if (
                isinstance(scale, bool)
                or not isinstance(scale, (int, float))
                or float(scale) not in _SCALE_CHANNEL_DIVISORS
            ):
                raise ValueError(
                    f'scale_factors entry {scale!r} is not allowed; choose from {allowed}'
                )
            parsed.append(float(scale))
        if any(a <= b for a, b in zip(parsed, parsed[1:])):
            raise ValueError(
                f'scale_factors must be strictly decreasing (fine to coarse), got '
                f'{tuple(scale_factors)}'
            )
        return tuple(parsed)

    @staticmethod
    def _resolve_norm_cfg(norm_cfg: Optional[dict]) -> Optional[dict]:
        """Replace a registered norm name by its class, looked up from mmdeit's registry."""
        if norm_cfg is None:
            return None
        if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
            raise TypeError(f'norm_cfg must be None or a dict with a "type" key, got {norm_cfg!r}')
        norm_type = norm_cfg['type']
        norm_cls = MODELS.get(norm_type) if isinstance(norm_type, str) else norm_type
        if norm_cls is None:
            raise ValueError(
                f'norm_cfg type {norm_type!r} is not registered (in mmdeit, '
                f'mmpretrain or mmengine); use e.g. "LN2d", "GN", "BN" or "SyncBN"'
            )
        if norm_cls is nn.LayerNorm:
            raise ValueError(
                'norm_cfg type "LN" normalizes the last dim and does not work on '
                '(B, C, H, W) maps; use "LN2d"'
            )
        return {**norm_cfg, 'type': norm_cls}

    @staticmethod
    def _build_rescale(scale: float, channels: int, norm_cfg: Optional[dict]) -> nn.Module:
        if scale == 4.0:
            layers = [nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)]
            if norm_cfg is not None:
                layers.append(build_norm_layer(norm_cfg, channels // 2)[1])
            layers += [nn.GELU(), nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2)]
            return nn.Sequential(*layers)
        if scale == 2.0:
            return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
        if scale == 1.0:
            return nn.Identity()
        return nn.MaxPool2d(kernel_size=2, stride=2)

    # ------------------------------------------------------------------ forward
    def forward(
        self, inputs: Union[torch.Tensor, Sequence[torch.Tensor]]
    ) -> Tuple[torch.Tensor, ...]:
        """Backbone output (a tuple of (B, C, H, W) maps, or one map) -> ``num_outs`` maps.

        Level i has ``out_channels`` channels and size (H * s_i, W * s_i) for the i-th scale
        factor s_i, then halves per extra level.
        """
        if isinstance(inputs, torch.Tensor):
            x = inputs
        else:
            if not -len(inputs) <= self.in_index < len(inputs):
                raise IndexError(
                    f'in_index {self.in_index} is out of range for a backbone '
                    f'output of {len(inputs)} maps'
                )
            x = inputs[self.in_index]
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f'SimpleFPN expects a (B, {self.in_channels}, H, W) feature map '
                f'(backbone out_type="featmap"), got shape {tuple(x.shape)}'
            )
        outs = [
            output_conv(lateral_conv(rescale(x)))  # (B, out_channels, H*s, W*s)
            for rescale, lateral_conv, output_conv in zip(
                self.rescales, self.lateral_convs, self.output_convs
            )
        ]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
