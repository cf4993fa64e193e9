"""ViT backbone whose extra tokens and output formatting are hooks for subclasses."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import PatchEmbed
from mmengine.logging import MMLogger
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.models.utils import build_norm_layer, to_2tuple

from mmdeit.registry import MODELS

from ..utils import patch_gemm, pos_embed_grid, resize_pos_embed
from .fast_transformer_layer import FastTransformerEncoderLayer
from .transformer_layer import TransformerEncoderLayer

ARCH_KEYS = ('embed_dims', 'num_layers', 'num_heads', 'feedforward_channels')


def _arch(embed_dims: int, num_layers: int, num_heads: int, ffn: int) -> dict:
    return dict(
        embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads, feedforward_channels=ffn
    )


@MODELS.register_module()
class VisionTransformer(BaseBackbone):
    """Vision Transformer (Dosovitskiy et al., 2021) with hooks for extra tokens.

    The plain (non-distilled) DeiT backbone and the base of :class:`DistilledVisionTransformer`;
    its state_dict keys are those of mmpretrain 1.2's ``VisionTransformer``. A subclass sets
    ``extra_tokens`` (the names of the learnt tokens put before the patch tokens) and may
    override :meth:`_format_output`; it never re-implements :meth:`forward`.

    Args:
        arch: A name from ``arch_zoo`` ('deit-tiny'/'deit-t', 'deit-small'/'deit-s',
            'deit-base'/'deit-b', 'small'/'s', 'base'/'b', 'large'/'l') or a dict with keys
            ``embed_dims, num_layers, num_heads, feedforward_channels``. Defaults to 'base'.
        img_size: Training input size; sets the size of ``pos_embed``. Other input sizes are
            handled by resizing ``pos_embed`` on the fly. Defaults to 224.
        patch_size: Patch size. Defaults to 16.
        in_channels: Input channels. Defaults to 3.
        out_indices: Layer indices whose tokens are output; negative counts from the end.
            Defaults to -1 (the last layer).
        drop_rate: Dropout after position embedding and in the layers. Defaults to 0.
        drop_path_rate: Stochastic depth rate, linearly increased over layers. Defaults to 0.
        qkv_bias: Bias in the qkv projection. Defaults to True.
        norm_cfg: Normalization config. Defaults to ``dict(type='LN', eps=1e-6)``.
        final_norm: Normalize the output of the last layer (``ln1``). Defaults to True.
        out_type: One of 'cls_token', 'featmap', 'avg_featmap', 'raw'. Defaults to
            'cls_token'.
        frozen_stages: Freeze the embeddings and the first ``frozen_stages`` layers (no grad,
            eval mode, also after ``.train()``); -1 or 0 freezes nothing. Defaults to -1.
        interpolate_mode: Mode used to resize ``pos_embed``. Defaults to 'bicubic'.
        layer_scale_init_value: LayerScale init; 0 disables it. Defaults to 0.
        patch_cfg: Extra arguments of mmcv's ``PatchEmbed``. Defaults to an empty dict.
        layer_cfgs: Extra arguments of each layer (a dict for all, or one per layer).
            Defaults to an empty dict.
        pre_norm: Normalize tokens before the first layer (CLIP style). Defaults to False.
        with_cp: Gradient checkpointing in every layer. Defaults to False.
        fast_path: Build the layers with the speed measures of ``fast_transformer_layer.py``
            (oneDNN linears and fused GELU in fp32 CPU inference, shortcuts summed inside the
            GEMMs, stochastic depth that skips the dropped samples). Exact in fp32: the same
            function, parameters and stochastic depth draws; only the rounding order of sums
            differs (with ``drop_rate`` > 0 in training the dropout masks are drawn in another
            order, equally distributed). False (``backbone=dict(..., fast_path=False)`` in a
            config) builds the reference layers of ``transformer_layer.py``, which read as
            the formula (what the ONNX export traces). On both paths the last layer computes
            only the tokens :meth:`_format_output` reads. Defaults to True.
        init_cfg: Initialization config. Defaults to None.
    """

    arch_zoo = {
        **dict.fromkeys(['s', 'small'], _arch(768, 8, 8, 768 * 3)),
        **dict.fromkeys(['b', 'base'], _arch(768, 12, 12, 3072)),
        **dict.fromkeys(['l', 'large'], _arch(1024, 24, 16, 4096)),
        **dict.fromkeys(['deit-t', 'deit-tiny'], _arch(192, 12, 3, 192 * 4)),
        **dict.fromkeys(['deit-s', 'deit-small'], _arch(384, 12, 6, 384 * 4)),
        **dict.fromkeys(['deit-b', 'deit-base'], _arch(768, 12, 12, 768 * 4)),
    }
    OUT_TYPES = ('cls_token', 'featmap', 'avg_featmap', 'raw')
    #: Names of the learnt tokens concatenated before the patch tokens, in order.
    extra_tokens: Tuple[str, ...] = ('cls_token',)

    def __init__(
        self,
        arch: Union[str, dict] = 'base',
        img_size: Union[int, Sequence[int]] = 224,
        patch_size: Union[int, Sequence[int]] = 16,
        in_channels: int = 3,
        out_indices: Union[int, Sequence[int]] = -1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        norm_cfg: dict = dict(type='LN', eps=1e-6),
        final_norm: bool = True,
        out_type: str = 'cls_token',
        frozen_stages: int = -1,
        interpolate_mode: str = 'bicubic',
        layer_scale_init_value: float = 0.0,
        patch_cfg: dict = dict(),
        layer_cfgs: Union[dict, Sequence[dict]] = dict(),
        pre_norm: bool = False,
        with_cp: bool = False,
        fast_path: bool = True,
        init_cfg: Optional[Union[dict, List[dict]]] = None,
    ):
        super().__init__(init_cfg)
        if not isinstance(fast_path, bool):
            raise TypeError(f'fast_path must be True or False, got {fast_path!r}')
        self.fast_path = fast_path
        self.arch_settings = self._parse_arch(arch)
        self.embed_dims = self.arch_settings['embed_dims']
        self.num_layers = self.arch_settings['num_layers']
        self.img_size = to_2tuple(img_size)
        patch_hw = to_2tuple(patch_size)
        if any(s % p for s, p in zip(self.img_size, patch_hw)):
            raise ValueError(f'img_size {self.img_size} must be divisible by patch_size {patch_hw}')
        if out_type not in self.OUT_TYPES:
            raise ValueError(f'out_type must be one of {self.OUT_TYPES}, got {out_type!r}')
        self.out_type = out_type
        self.out_indices = self._parse_out_indices(out_indices)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_layers:
            raise ValueError(
                f'frozen_stages must be an int in [-1, {self.num_layers}] '
                f'(num_layers), got {frozen_stages!r}'
            )
        self.frozen_stages = frozen_stages
        self.interpolate_mode = interpolate_mode

        self.patch_embed = PatchEmbed(
            **{
                **dict(
                    in_channels=in_channels,
                    input_size=img_size,
                    embed_dims=self.embed_dims,
                    conv_type='Conv2d',
                    kernel_size=patch_size,
                    stride=patch_size,
                    bias=not pre_norm,
                ),
                **patch_cfg,
            }
        )
        self.patch_resolution = self.patch_embed.init_out_size
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]

        for name in self.extra_tokens:
            setattr(self, name, nn.Parameter(torch.zeros(1, 1, self.embed_dims)))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_extra_tokens, self.embed_dims)
        )
        self._register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        self.pre_norm = build_norm_layer(norm_cfg, self.embed_dims) if pre_norm else nn.Identity()

        dpr = np.linspace(0, drop_path_rate, self.num_layers)  # stochastic depth decay rule
        if isinstance(layer_cfgs, dict):
            layer_cfgs = [layer_cfgs] * self.num_layers
        if len(layer_cfgs) != self.num_layers:
            raise ValueError(
                f'layer_cfgs has {len(layer_cfgs)} entries, expected num_layers={self.num_layers}'
            )
        layer_cls = FastTransformerEncoderLayer if fast_path else TransformerEncoderLayer
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            cfg = dict(
                embed_dims=self.embed_dims,
                num_heads=self.arch_settings['num_heads'],
                feedforward_channels=self.arch_settings['feedforward_channels'],
                layer_scale_init_value=layer_scale_init_value,
                drop_rate=drop_rate,
                drop_path_rate=float(dpr[i]),
                qkv_bias=qkv_bias,
                norm_cfg=norm_cfg,
                with_cp=with_cp,
            )
            cfg.update(layer_cfgs[i])
            self.layers.append(layer_cls(**cfg))

        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, self.embed_dims)
        if out_type == 'avg_featmap':
            self.ln2 = build_norm_layer(norm_cfg, self.embed_dims)
        if self.frozen_stages > 0:
            self._freeze_stages()

    # ------------------------------------------------------------------ construction
    @property
    def num_extra_tokens(self) -> int:
        """Number of learnt tokens before the patch tokens."""
        return len(self.extra_tokens)

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(
                    f'arch {arch!r} is unknown; choose from '
                    f'{sorted(cls.arch_zoo)} or pass a dict with keys {ARCH_KEYS}'
                )
            return dict(cls.arch_zoo[key])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        missing = [k for k in ARCH_KEYS if k not in arch]
        if missing:
            raise ValueError(f'arch dict is missing keys {missing}; it needs {ARCH_KEYS}')
        return dict(arch)

    def _parse_out_indices(self, out_indices: Union[int, Sequence[int]]) -> List[int]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, Sequence) or not out_indices:
            raise TypeError(
                f'out_indices must be an int or a non-empty sequence of ints, got {out_indices!r}'
            )
        parsed = []
        for index in out_indices:
            if not isinstance(index, int) or not -self.num_layers <= index < self.num_layers:
                raise ValueError(
                    f'out_indices entry {index!r} is out of range for '
                    f'num_layers={self.num_layers} (allowed: '
                    f'{-self.num_layers}..{self.num_layers - 1})'
                )
            parsed.append(index % self.num_layers)
        return parsed

    def init_weights(self) -> None:
        super().init_weights()
        if not (isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained'):
            trunc_normal_(self.pos_embed, std=0.02)
            for name in self.extra_tokens:
                trunc_normal_(getattr(self, name), std=0.02)

    def _prepare_pos_embed(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        """Resize a checkpoint's ``pos_embed`` trained at another input size on load."""
        name = prefix + 'pos_embed'
        if name not in state_dict or state_dict[name].shape == self.pos_embed.shape:
            return
        ckpt_shape = tuple(state_dict[name].shape)
        grid = pos_embed_grid(state_dict[name], self.num_extra_tokens, name=f'checkpoint {name}')
        MMLogger.get_current_instance().info(
            f'Resize {name} from {ckpt_shape} to {tuple(self.pos_embed.shape)}.'
        )
        state_dict[name] = resize_pos_embed(
            state_dict[name],
            grid,
            self.patch_resolution,
            self.interpolate_mode,
            self.num_extra_tokens,
        )

    # ------------------------------------------------------------------ freezing
    def _freeze_stages(self) -> None:
        self.drop_after_pos.eval()
        frozen = [self.patch_embed, self.pre_norm, *self.layers[: self.frozen_stages]]
        if self.frozen_stages == self.num_layers:
            frozen += [getattr(self, n) for n in ('ln1', 'ln2') if hasattr(self, n)]
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False
        for name in ('pos_embed', *self.extra_tokens):
            getattr(self, name).requires_grad = False

    def train(self, mode: bool = True) -> 'VisionTransformer':
        super().train(mode)
        if mode and self.frozen_stages > 0:
            self._freeze_stages()
        return self

    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter for layer-wise learning-rate decay.

        Embeddings (``patch_embed``, ``pos_embed`` and every extra token) are depth 0,
        layer i is depth i+1, and everything after the layers is the last depth.

        Returns:
            (layer_depth, num_layers + 2)
        """
        num_layers = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix) :]
        if name in ('pos_embed', *self.extra_tokens) or name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    # ------------------------------------------------------------------ forward
    def _embed(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch-embed, mask (see :meth:`_mask_patches`), prepend the extra tokens, add position
        embedding."""
        in_channels = self.patch_embed.projection.in_channels
        if x.dim() != 4 or x.shape[1] != in_channels:
            raise ValueError(
                f'{type(self).__name__} expects images of shape (B, {in_channels}, H, W) '
                f'(in_channels={in_channels}), got {tuple(x.shape)}'
            )
        B = x.shape[0]
        x, patch_resolution = patch_gemm.embed(self.patch_embed, x, self.fast_path)  # (B, H*W, C)
        if mask is not None:
            x = self._mask_patches(x, mask, patch_resolution)  # (B, H*W, C)
        tokens = [getattr(self, n).expand(B, -1, -1) for n in self.extra_tokens]
        x = torch.cat((*tokens, x), dim=1)  # (B, k+H*W, C)
        x = x + resize_pos_embed(
            self.pos_embed,
            self.patch_resolution,
            patch_resolution,
            self.interpolate_mode,
            self.num_extra_tokens,
        )
        return self.pre_norm(self.drop_after_pos(x)), patch_resolution

    def _mask_patches(self, x: torch.Tensor, mask: torch.Tensor, hw: Tuple[int, int]):
        """Hook: replace masked patch embeddings; only a backbone with a mask token does."""
        raise ValueError(
            f'mask was given to {type(self).__name__}, which has no mask token; use '
            'MaskedVisionTransformer or MaskedDistilledVisionTransformer (masked image modeling)'
        )

    def _format_output(self, x: torch.Tensor, hw: Tuple[int, int]):
        """Turn the tokens (B, k+H*W, C) of an output layer into the ``out_type`` output."""
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        patch_token = x[:, self.num_extra_tokens :]  # (B, H*W, C)
        if self.out_type == 'featmap':
            return patch_token.reshape(x.shape[0], *hw, -1).permute(0, 3, 1, 2)  # (B, C, H, W)
        return self.ln2(patch_token.mean(dim=1))  # avg_featmap: (B, C)

    def _last_layer_queries(self) -> Optional[int]:
        """How many leading tokens :meth:`_format_output` reads from the last layer.

        None means all. With ``out_type='cls_token'`` only the extra tokens are read, so the
        last layer computes only their outputs (they still attend to every token): the same
        result without the patch tokens' queries, projections and FFN, which nothing uses.
        A subclass whose ``_format_output`` reads other tokens overrides this. Used on both
        paths (fast and reference layers).
        """
        return self.num_extra_tokens if self.out_type == 'cls_token' else None

    def _run_layers(self, x: torch.Tensor, hw: Tuple[int, int], with_details: bool):
        outs, hidden_states, attentions = [], [x], []
        last = self.num_layers - 1
        wanted = set(self.out_indices)
        for i, layer in enumerate(self.layers):
            if with_details:
                x, attn = layer.forward_with_attention(x)
                hidden_states.append(x)
                attentions.append(attn)
            elif i == last:
                x = layer(x, num_queries=self._last_layer_queries())  # (B, n, C)
            else:
                x = layer(x)
            if i == last and self.final_norm:
                x = self.ln1(x)
            if i in wanted:
                outs.append(self._format_output(x, hw))
        return tuple(outs), hidden_states, attentions

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple:
        """Images (B, C_in, H, W) -> one ``out_type`` output per entry of ``out_indices``.

        ``mask`` (patches to hide) is for backbones with a mask token; defaults to None.
        """
        x, hw = self._embed(x, mask)
        return self._run_layers(x, hw, with_details=False)[0]

    def forward_with_details(self, x: torch.Tensor) -> Dict[str, tuple]:
        """Forward that also returns every layer's tokens and attention probabilities.

        Like HF transformers' ``output_hidden_states`` / ``output_attentions``; the default
        :meth:`forward` does none of this extra work.

        Returns:
            dict with ``outs`` (what :meth:`forward` returns), ``hidden_states`` (the
            embeddings and each layer's output, before the final norm, num_layers + 1 tensors
            of (B, k+H*W, C)), ``attentions`` (num_layers tensors of (B, heads, N, N)) and
            ``patch_resolution`` (H, W).
        """
        x, hw = self._embed(x)
        outs, hidden_states, attentions = self._run_layers(x, hw, with_details=True)
        return dict(
            outs=outs,
            hidden_states=tuple(hidden_states),
            attentions=tuple(attentions),
            patch_resolution=hw,
        )
