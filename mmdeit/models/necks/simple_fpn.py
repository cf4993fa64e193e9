"""ViTDet-style simple feature pyramid for a single-scale (plain ViT / DeiT) feature map."""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerNorm2d

from mmdeit.registry import MODELS

#: Allowed rescaling factors and the channels of the rescaled map, as a fraction of the input's.
_SCALE_CHANNEL_DIVISORS = {4.0: 4, 2.0: 2, 1.0: 1, 0.5: 1}
#: The scales of the ViTDet paper, and the only ones of the ViTDet form (``backbone_channel``).
_VITDET_SCALE_FACTORS = (4.0, 2.0, 1.0, 0.5)


class _ViTDetLN2d(LayerNorm2d):
    """mmpretrain's ``LN2d`` under the state-dict name that mmdet ViTDet's ``LN2d`` gets.

    mmdet's ViTDet project defines its own ``LN2d`` (an ``nn.Module``), which mmcv's
    ``ConvModule`` names ``norm_layer``; mmpretrain's is an ``nn.LayerNorm``, named ``ln``. Both
    compute the same channel LayerNorm (biased variance, eps inside the square root, and the
    eps of ``norm_cfg``, 1e-5 unless given, as mmcv's ``build_norm_layer`` sets it for both).
    """

    _abbr_ = 'norm_layer'


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

    Two signatures build this network:

    - mmdeit's: ``SimpleFPN(in_channels=C, scale_factors=...)``, any decreasing subset of the
      scales; the parameters are ``rescales``, ``lateral_convs`` and ``output_convs``.
    - mmdet ViTDet's (``projects/ViTDet/vitdet/simple_fpn.py`` of mmdet 3.x), so that its
      configs work unchanged with ``type='mmdeit.SimpleFPN'``:
      ``SimpleFPN(backbone_channel=C, in_channels=[C/4, C/2, C, C], out_channels=256,
      num_outs=5, norm_cfg=...)``. The scales are fixed at (4, 2, 1, 0.5) and the module has
      mmdet's names, so its state dict has the keys of mmdet's ``SimpleFPN`` and their
      checkpoints load both ways: ``fpn1`` .. ``fpn4`` (each an ``nn.Sequential``),
      ``lateral_convs``, ``fpn_convs``, and ``norm_layer`` for an ``'LN2d'`` norm in the convs.
      From mmdeit's keys: ``rescales.0.`` -> ``fpn1.``, ``rescales.1.`` -> ``fpn2.0.``,
      ``output_convs.`` -> ``fpn_convs.``, and ``.ln.`` -> ``.norm_layer.`` (LN2d only).

    Unlike mmdet's, the ViTDet form also takes a tuple of maps (``in_index`` picks one) and
    ``norm_cfg=None``, and it checks its arguments. Giving ``backbone_channel`` selects it;
    ``scale_factors`` with it, or an ``in_channels`` list without it, is an error.

    Norm types are looked up in mmdeit's registry (which falls back to mmpretrain's and
    mmengine's), so the default ``'LN2d'`` works whatever the default scope (mmdet, mmseg) is.

    Args:
        in_channels: Channels C of the backbone feature map (``embed_dims``); in the ViTDet
            form, the list ``[C/4, C/2, C, C]`` of the rescaled maps' channels.
        out_channels: Channels of every output level. Defaults to 256.
        scale_factors: Rescaling factors of the backbone map, strictly decreasing, each one of
            4, 2, 1, 0.5; not allowed in the ViTDet form. Defaults to None, i.e.
            (4.0, 2.0, 1.0, 0.5).
        num_outs: Number of output levels, at least ``len(scale_factors)``. Defaults to 5.
        in_index: Which entry of the backbone's output tuple to use. Defaults to -1.
        norm_cfg: Norm after every conv and inside the scale-4 branch (a 2d norm that takes
            (B, C, H, W); use 'LN2d', not 'LN'), or None for no norm (then the convs have a
            bias). Defaults to ``dict(type='LN2d', eps=1e-6)``.
        act_cfg: Activation after the lateral and output convs, or None. Defaults to None.
        init_cfg: Initialization config; None keeps mmcv's ``ConvModule`` init (Kaiming) and
            PyTorch's for the transposed convs. Defaults to None.
        backbone_channel: Channels C of the backbone map, given only in mmdet ViTDet's form
            (then ``in_channels`` is the list). Defaults to None (mmdeit's form).
        conv_cfg: Conv layer config of the lateral and output convs (mmcv's ``conv_cfg``).
            Defaults to None, i.e. ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: Union[int, Sequence[int]],
        out_channels: int = 256,
        scale_factors: Optional[Sequence[float]] = None,
        num_outs: int = 5,
        in_index: int = -1,
        norm_cfg: Optional[dict] = dict(type='LN2d', eps=1e-6),
        act_cfg: Optional[dict] = None,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
        backbone_channel: Optional[int] = None,
        conv_cfg: Optional[dict] = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        self.vitdet_layout = backbone_channel is not None
        if self.vitdet_layout:
            channels = self._check_vitdet_form(backbone_channel, in_channels, scale_factors)
            scale_factors = _VITDET_SCALE_FACTORS
        else:
            if isinstance(in_channels, Sequence) and not isinstance(in_channels, str):
                raise ValueError(
                    f"in_channels {list(in_channels)} is a list, the form of mmdet ViTDet's "
                    "SimpleFPN, which needs backbone_channel (the backbone map's channels C); "
                    'give backbone_channel=C with in_channels=[C/4, C/2, C, C], or in_channels=C'
                )
            channels = in_channels
            if scale_factors is None:
                scale_factors = _VITDET_SCALE_FACTORS
        for name, value in (('in_channels', channels), ('out_channels', out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise TypeError(f'{name} must be a positive int, got {value!r}')
        self.scale_factors = self._check_scale_factors(scale_factors)
        if 4.0 in self.scale_factors and channels % 4:
            raise ValueError(
                f'in_channels must be divisible by 4 for scale factor 4 (the '
                f'branch has C/2 and C/4 channels), got {channels}'
            )
        if 2.0 in self.scale_factors and channels % 2:
            raise ValueError(
                f'in_channels must be divisible by 2 for scale factor 2, got {channels}'
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
        for name, cfg in (('act_cfg', act_cfg), ('conv_cfg', conv_cfg)):
            if cfg is not None and not (isinstance(cfg, dict) and 'type' in cfg):
                raise TypeError(f'{name} must be None or a dict with a "type" key, got {cfg!r}')
        self.feat_channels = channels
        self.in_channels = list(in_channels) if self.vitdet_layout else channels
        self.backbone_channel = backbone_channel
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.in_index = in_index
        norm_cfg = self._resolve_norm_cfg(norm_cfg)
        if self.vitdet_layout and norm_cfg is not None and norm_cfg['type'] is LayerNorm2d:
            norm_cfg = {**norm_cfg, 'type': _ViTDetLN2d}

        rescales = []
        lateral_convs = nn.ModuleList()
        output_convs = nn.ModuleList()
        for scale in self.scale_factors:
            rescales.append(self._build_rescale(scale, channels, norm_cfg))
            level_channels = channels // _SCALE_CHANNEL_DIVISORS[scale]
            lateral_convs.append(
                ConvModule(
                    level_channels,
                    out_channels,
                    1,
                    conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False,
                )
            )
            output_convs.append(
                ConvModule(
                    out_channels,
                    out_channels,
                    3,
                    padding=1,
                    conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg,
                    inplace=False,
                )
            )
        if self.vitdet_layout:
            # mmdet ViTDet's names and order: fpn1..fpn4 (nn.Sequential), lateral_convs, fpn_convs.
            for i, rescale in enumerate(rescales, start=1):
                if not isinstance(rescale, nn.Sequential):
                    rescale = nn.Sequential(rescale)
                self.add_module(f'fpn{i}', rescale)
            self.lateral_convs = lateral_convs
            self.fpn_convs = output_convs
        else:
            self.rescales = nn.ModuleList(rescales)
            self.lateral_convs = lateral_convs
            self.output_convs = output_convs

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_vitdet_form(
        backbone_channel: int, in_channels: Sequence[int], scale_factors: Optional[Sequence[float]]
    ) -> int:
        """Check mmdet ViTDet's arguments; return the backbone map's channels C."""
        if (
            isinstance(backbone_channel, bool)
            or not isinstance(backbone_channel, int)
            or backbone_channel <= 0
        ):
            raise TypeError(f'backbone_channel must be a positive int, got {backbone_channel!r}')
        if backbone_channel % 4:
            raise ValueError(
                f'backbone_channel must be divisible by 4 (the ViTDet levels have C/4 and C/2 '
                f'channels), got {backbone_channel}'
            )
        if scale_factors is not None:
            raise ValueError(
                f'scale_factors={scale_factors!r} cannot be combined with backbone_channel: '
                f"mmdet ViTDet's form has the fixed scales {_VITDET_SCALE_FACTORS}; give either "
                'backbone_channel=C and in_channels=[C/4, C/2, C, C], or in_channels=C and '
                'scale_factors'
            )
        expected = [backbone_channel // d for d in (4, 2, 1, 1)]
        if isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence):
            raise TypeError(
                f'in_channels must be the list [C/4, C/2, C, C] = {expected} when '
                f"backbone_channel={backbone_channel} is given (mmdet ViTDet's form), got "
                f'{in_channels!r}; for in_channels=C, leave backbone_channel out'
            )
        if len(in_channels) != 4:
            raise ValueError(
                f'in_channels must have 4 entries (the levels of scale 4, 2, 1, 0.5), got '
                f'{len(in_channels)}: {list(in_channels)}'
            )
        if any(isinstance(c, bool) or not isinstance(c, int) for c in in_channels):
            raise TypeError(f'in_channels entries must be ints, got {list(in_channels)}')
        if list(in_channels) != expected:
            raise ValueError(
                f'in_channels {list(in_channels)} does not match backbone_channel='
                f'{backbone_channel}: the ViTDet levels have [C/4, C/2, C, C] = {expected} '
                'channels'
            )
        return backbone_channel

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
        if x.dim() != 4 or x.shape[1] != self.feat_channels:
            raise ValueError(
                f'SimpleFPN expects a (B, {self.feat_channels}, H, W) feature map '
                f'(backbone out_type="featmap"), got shape {tuple(x.shape)}'
            )
        if self.vitdet_layout:
            rescales = [getattr(self, f'fpn{i}') for i in range(1, len(self.scale_factors) + 1)]
            output_convs = self.fpn_convs
        else:
            rescales, output_convs = self.rescales, self.output_convs
        outs = [
            output_conv(lateral_conv(rescale(x)))  # (B, out_channels, H*s, W*s)
            for rescale, lateral_conv, output_conv in zip(
                rescales, self.lateral_convs, output_convs
            )
        ]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
