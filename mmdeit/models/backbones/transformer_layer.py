"""Pre-norm transformer encoder layer of ViT/DeiT.

Module and parameter names follow mmpretrain 1.2 (``ln1``, ``attn.qkv``, ``attn.proj``,
``ln2``, ``ffn.layers.0.0``, ``ffn.layers.1``, ``attn.gamma1``, ``ffn.gamma2``) so that
mmpretrain checkpoints load strictly. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`.

Speed (see ``docs/benchmarks.md``): the qkv output is viewed, never copied, as the three
(B, h, N, d) operands of SDPA, whose output is laid out (B, N, h, d) in memory, so the output
projection reads it as a (B*N, C) view. The shortcut is summed inside the GEMM of the output
projection and of the second FFN layer (``identity + bias`` is written once and ``addmm_``
accumulates ``x @ W^T`` into it) instead of in a separate add, and stochastic depth is one
``addcmul``. Without autograd (inference) the FFN's GELU and shortcut are computed in place.
All of this is exact (fp32, erf GELU): only the rounding order of the sums changes.
"""

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerScale, build_norm_layer
from torch.utils.checkpoint import checkpoint


def _active_dropout(module: nn.Module) -> bool:
    """Whether a dropout-like module (Dropout or DropPath) changes its input now."""
    p = getattr(module, 'p', getattr(module, 'drop_prob', 0.0))
    return module.training and p > 0


def _residual_linear(
    identity: torch.Tensor,
    x: torch.Tensor,
    linear: nn.Linear,
    dropout: nn.Module,
    layer_scale: nn.Module,
    drop_path: nn.Module,
    inplace: bool = False,
) -> torch.Tensor:
    """``identity + drop_path(layer_scale(dropout(linear(x))))`` with fewer memory passes.

    The common case (no active dropout, no LayerScale) writes ``identity + bias`` once and lets
    the GEMM accumulate ``x @ W^T`` into it (``addmm_``, beta=1): one memory pass instead of
    the bias copy of ``addmm``, a new tensor for the branch and the add. An active DropPath
    becomes one ``addcmul`` with the per-sample mask (drawn exactly as mmcv's ``drop_path``
    draws it, so the random stream is the same).

    Args:
        identity: The shortcut (B, N, C_out).
        x: The branch input (B, N, C_in).
        linear: The branch's linear layer.
        dropout: Dropout after the linear layer.
        layer_scale: LayerScale or ``nn.Identity``.
        drop_path: DropPath or ``nn.Identity``.
        inplace: Write the result into ``identity``'s memory; only for a temporary that
            nothing else holds, with autograd off. Defaults to False.
    """
    if (
        _active_dropout(dropout)
        or not isinstance(layer_scale, nn.Identity)
        or torch.is_autocast_enabled(x.device.type)  # keep the shortcut in full precision
    ):
        return identity + drop_path(layer_scale(dropout(linear(x))))
    if _active_dropout(drop_path):
        keep = 1 - drop_path.drop_prob
        shape = (identity.shape[0],) + (1,) * (identity.dim() - 1)  # (B, 1, 1)
        mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_().div_(keep)
        return torch.addcmul(identity, linear(x), mask)
    shape = identity.shape  # (B, N, C_out)
    x2d = x.reshape(-1, x.shape[-1])  # (B*N, C_in), a view for contiguous x
    identity2d = identity.reshape(-1, shape[-1])  # (B*N, C_out)
    bias = linear.bias
    if inplace and identity.is_contiguous():
        out = identity2d if bias is None else identity2d.add_(bias)
    else:
        # One pass writes ``identity + bias`` (the copy ``addmm`` would do for the bias).
        out = identity2d.clone() if bias is None else identity2d + bias
    return out.addmm_(x2d, linear.weight.t()).view(shape)  # GEMM with beta=1: adds in place


def _layer_scale(dims: int, init_value: float, data_format: str = 'channels_last') -> nn.Module:
    if init_value > 0:
        return LayerScale(dims, layer_scale_init_value=init_value, data_format=data_format)
    return nn.Identity()


class MultiheadAttention(BaseModule):
    """Multi-head self-attention with a fused qkv projection.

    Args:
        embed_dims: Token dimension C.
        num_heads: Number of heads; must divide ``embed_dims``.
        qkv_bias: Whether the qkv projection has a bias. Defaults to True.
        attn_drop: Dropout on attention probabilities (training only). Defaults to 0.
        proj_drop: Dropout after the output projection. Defaults to 0.
        drop_path_rate: Stochastic depth on the residual branch. Defaults to 0.
        layer_scale_init_value: LayerScale init; 0 disables it. Defaults to 0.
        init_cfg: Initialization config. Defaults to None.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads != 0:
            raise ValueError(
                f'embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})'
            )
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.scale = self.head_dims**-0.5
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.out_drop = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.gamma1 = _layer_scale(embed_dims, layer_scale_init_value)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dims)  # (B, N, 3, h, d)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d), views

    def _project(self, x: torch.Tensor, identity: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, _, N, _ = x.shape
        # SDPA's output is (B, N, h, d) in memory, so this is a view, not a copy.
        x = x.transpose(1, 2).reshape(B, N, self.embed_dims)  # (B, N, C)
        if identity is None:
            return self.out_drop(self.gamma1(self.proj_drop(self.proj(x))))
        return _residual_linear(identity, x, self.proj, self.proj_drop, self.gamma1, self.out_drop)

    def forward(self, x: torch.Tensor, identity: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend. ``x``: (B, N, C) -> (B, N, C).

        Args:
            x: The (normalized) tokens (B, N, C).
            identity: The shortcut (B, N, C) to add to the result, or None to return the
                residual branch alone. Defaults to None.
        """
        q, k, v = self._qkv(x)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, h, N, d)
        return self._project(out, identity)

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Attend and also return the attention probabilities, shape (B, heads, N, N).

        Numerically the same as :meth:`forward` up to float rounding; slower, since the
        probabilities have to be materialised.
        """
        q, k, v = self._qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
        attn = attn.softmax(dim=-1)
        weights = F.dropout(attn, self.attn_drop, self.training)
        return self._project(weights @ v), attn


class FFN(BaseModule):
    """Two-layer MLP with GELU, named like mmcv's ``FFN`` (``layers.0.0``, ``layers.1``).

    Args:
        embed_dims: Token dimension C.
        feedforward_channels: Hidden dimension.
        ffn_drop: Dropout after each linear layer. Defaults to 0.
        drop_path_rate: Stochastic depth on the residual branch. Defaults to 0.
        layer_scale_init_value: LayerScale init; 0 disables it. Defaults to 0.
        init_cfg: Initialization config. Defaults to None.
    """

    def __init__(
        self,
        embed_dims: int,
        feedforward_channels: int,
        ffn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float = 0.0,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.layers = nn.Sequential(
            nn.Sequential(
                nn.Linear(embed_dims, feedforward_channels), nn.GELU(), nn.Dropout(ffn_drop)
            ),
            nn.Linear(feedforward_channels, embed_dims),
            nn.Dropout(ffn_drop),
        )
        self.gamma2 = _layer_scale(embed_dims, layer_scale_init_value)
        self.dropout_layer = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        identity: Optional[torch.Tensor] = None,
        reuse_identity: bool = False,
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C).

        Args:
            x: The (normalized) tokens (B, N, C).
            identity: The shortcut (B, N, C) to add to the result, or None to return the
                residual branch alone. Defaults to None.
            reuse_identity: ``identity`` is a temporary of the caller: without autograd the
                result is written into its memory. Defaults to False.
        """
        fc1, act, drop1 = self.layers[0]
        fc2, drop2 = self.layers[1], self.layers[2]
        no_grad = not torch.is_grad_enabled()
        h = fc1(x)  # (B, N, feedforward_channels)
        if no_grad and type(act) is nn.GELU:
            h = torch.ops.aten.gelu_(h, approximate=act.approximate)  # in place; erf by default
        else:
            h = act(h)
        h = drop1(h)
        if identity is None:
            return self.dropout_layer(self.gamma2(drop2(fc2(h))))
        return _residual_linear(
            identity,
            h,
            fc2,
            drop2,
            self.gamma2,
            self.dropout_layer,
            inplace=reuse_identity and no_grad,
        )


class TransformerEncoderLayer(BaseModule):
    """One pre-norm ViT encoder layer: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``.

    Args:
        embed_dims: Token dimension C.
        num_heads: Number of attention heads.
        feedforward_channels: Hidden dimension of the FFN.
        layer_scale_init_value: LayerScale init; 0 disables it. Defaults to 0.
        drop_rate: Dropout after projections. Defaults to 0.
        attn_drop_rate: Dropout on attention probabilities. Defaults to 0.
        drop_path_rate: Stochastic depth rate. Defaults to 0.
        qkv_bias: Whether the qkv projection has a bias. Defaults to True.
        norm_cfg: Normalization config. Defaults to ``dict(type='LN')``.
        with_cp: Recompute this layer in the backward pass (gradient checkpointing) to save
            memory; outputs are unchanged. Defaults to False.
        init_cfg: Initialization config. Defaults to None.
    """

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        feedforward_channels: int,
        layer_scale_init_value: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        norm_cfg: dict = dict(type='LN'),
        with_cp: bool = False,
        init_cfg: Optional[dict] = None,
    ):
        super().__init__(init_cfg=init_cfg)
        self.embed_dims = embed_dims
        self.with_cp = with_cp
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)
        self.attn = MultiheadAttention(
            embed_dims,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=drop_rate,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
        )
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)
        self.ffn = FFN(
            embed_dims,
            feedforward_channels,
            ffn_drop=drop_rate,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
        )

    def init_weights(self) -> None:
        super().init_weights()
        for m in self.ffn.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.ln1(x), identity=x)  # a new tensor: the input is never modified
        return self.ffn(self.ln2(x), identity=x, reuse_identity=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the attention probabilities (B, h, N, N)."""
        out, attn = self.attn.forward_with_attention(self.ln1(x))
        x = x + out
        return x + self.ffn(self.ln2(x)), attn
