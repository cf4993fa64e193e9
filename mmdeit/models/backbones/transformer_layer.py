"""Pre-norm transformer encoder layer of ViT/DeiT, written as the formula.

Module and parameter names follow mmpretrain 1.2 (``ln1``, ``attn.qkv``, ``attn.proj``,
``attn.gamma1``, ``attn.out_drop``, ``ln2``, ``ffn.layers.0.0``, ``ffn.layers.1``,
``ffn.gamma2``, ``ffn.dropout_layer``) so that mmpretrain checkpoints load strictly. As in
mmpretrain, layer scale and stochastic depth live inside the attention and FFN modules::

    x = x + attn(ln1(x))    # attn(t) = out_drop(gamma1(proj_drop(proj(SDPA(qkv(t))))))
    x = x + ffn(ln2(x))     # ffn(t) = dropout_layer(gamma2(fc2(GELU(fc1(t)))))

This is the reference. A layer can give the outputs of its first ``num_queries`` tokens only
(they still attend to every token): the backbone asks its last layer for the tokens it reads.
Here that is the formula on those rows (q, the shortcut, the projection and the FFN); the
speed measures (oneDNN linears, shortcuts summed inside GEMMs, skipping the samples stochastic
depth drops, q's rows alone through the qkv GEMM) are subclasses in
``fast_transformer_layer.py``, chosen by the backbone's ``fast_path`` switch.
"""

from typing import Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import DropPath
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerScale, build_norm_layer
from torch.utils.checkpoint import checkpoint


def _layer_scale(dims: int, init_value: float) -> nn.Module:
    if init_value > 0:
        return LayerScale(dims, layer_scale_init_value=init_value)
    return nn.Identity()


class MultiheadAttention(BaseModule):
    """Multi-head self-attention with a fused qkv projection, through SDPA.

    Args:
        embed_dims: Token dimension C.
        num_heads: Number of heads h; must divide ``embed_dims``.
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

    def _split_heads(self, t: torch.Tensor, parts: int) -> Tuple[torch.Tensor, ...]:
        """(B, N, parts*C) -> ``parts`` views of shape (B, h, N, d), no copy."""
        B, N, _ = t.shape
        t = t.reshape(B, N, parts, self.num_heads, self.head_dims)  # (B, N, parts, h, d)
        return t.permute(2, 0, 3, 1, 4).unbind(0)  # parts x (B, h, N, d)

    def _qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(B, N, C) -> q, k, v, each (B, h, N, d): views of one GEMM's output."""
        return self._split_heads(self.qkv(x), 3)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v with the heads merged: q (B, h, n, d) -> (B, n, C)."""
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, h, n, d)
        B, _, n, _ = out.shape
        # SDPA's output is (B, n, h, d) in memory, so this is a view, not a copy.
        return out.transpose(1, 2).reshape(B, n, self.embed_dims)  # (B, n, C)

    def forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """The residual branch ``out_drop(gamma1(proj_drop(proj(attention(x)))))``.

        Args:
            x: The (normalized) tokens (B, N, C).
            num_queries: The branch of the first ``num_queries`` tokens only (their queries
                attend to all N keys); None for all. Defaults to None.

        Returns:
            The branch (B, n, C), n = ``num_queries`` or N, without the shortcut.
        """
        q, k, v = self._qkv(x)  # 3 x (B, h, N, d)
        if num_queries is not None:
            q = q[:, :, :num_queries]  # (B, h, n, d)
        out = self._attend(q, k, v)  # (B, n, C)
        return self.out_drop(self.gamma1(self.proj_drop(self.proj(out))))

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the attention probabilities (B, h, N, N).

        Numerically the same as :meth:`forward` up to float rounding; slower, since the
        probabilities have to be materialised.
        """
        q, k, v = self._qkv(x)  # 3 x (B, h, N, d)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
        weights = F.dropout(attn, self.attn_drop, self.training)
        B, _, N, _ = q.shape
        out = (weights @ v).transpose(1, 2).reshape(B, N, self.embed_dims)  # (B, N, C)
        return self.out_drop(self.gamma1(self.proj_drop(self.proj(out)))), attn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``dropout_layer(gamma2(drop(fc2(drop(GELU(fc1(x)))))))``.

        Args:
            x: The (normalized) tokens (B, N, C).

        Returns:
            The branch (B, N, C), without the shortcut.
        """
        return self.dropout_layer(self.gamma2(self.layers(x)))


class TransformerEncoderLayer(BaseModule):
    """One pre-norm ViT encoder layer: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``.

    The reference implementation; :class:`FastTransformerEncoderLayer` computes the same
    function with less work.

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

    #: The classes of ``attn`` and ``ffn``; a subclass may swap in its own.
    attn_cls: Type[MultiheadAttention] = MultiheadAttention
    ffn_cls: Type[FFN] = FFN

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
        self.attn = self.attn_cls(
            embed_dims,
            num_heads,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop_rate,
            proj_drop=drop_rate,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
        )
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)
        self.ffn = self.ffn_cls(
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

    def _forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        identity = x if num_queries is None else x[:, :num_queries]  # (B, n, C)
        x = identity + self.attn(self.ln1(x), num_queries)  # (B, n, C)
        return x + self.ffn(self.ln2(x))  # (B, n, C)

    def _run(self, fn, x: torch.Tensor, *args) -> torch.Tensor:
        """``fn(x, *args)``, recomputed in the backward pass when ``with_cp`` is set."""
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return checkpoint(fn, x, *args, use_reentrant=False)
        return fn(x, *args)

    def forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """(B, N, C) -> (B, n, C).

        Args:
            x: The tokens (B, N, C).
            num_queries: Compute only the first ``num_queries`` output tokens (they still
                attend to all N tokens); None for all. Defaults to None.
        """
        return self._run(self._forward, x, num_queries)

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the attention probabilities (B, h, N, N)."""
        out, attn = self.attn.forward_with_attention(self.ln1(x))
        x = x + out  # (B, N, C)
        return x + self.ffn(self.ln2(x)), attn
