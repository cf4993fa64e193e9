"""Pre-norm transformer encoder layer of ViT/DeiT.

Module and parameter names follow mmpretrain 1.2 (``ln1``, ``attn.qkv``, ``attn.proj``,
``ln2``, ``ffn.layers.0.0``, ``ffn.layers.1``, ``attn.gamma1``, ``ffn.gamma2``) so that
mmpretrain checkpoints load strictly. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`.

Speed (see ``docs/benchmarks.md``): the qkv output is viewed, never copied, as the three
(B, h, N, d) operands of SDPA, whose output is laid out (B, N, h, d) in memory, so the output
projection reads it as a (B*N, C) view. The shortcut is summed inside the GEMM of the output
projection and of the second FFN layer (``identity + bias`` is written once and ``addmm_``
accumulates ``x @ W^T`` into it) instead of in a separate add. Without autograd (inference)
on fp32 CPU tensors the linears run through oneDNN with the FFN's GELU fused
(``mmdeit/models/utils/onednn_linear.py``).
Two ways of skipping work whose result is thrown away, both exact:

* ``num_queries``: a layer can compute only the first ``num_queries`` output tokens (keys and
  values still come from every token). The backbone uses it in its last layer when only the
  cls/dist tokens are read (``out_type='cls_token'``): the patch tokens of the last layer feed
  nothing, so their queries, projections and FFN are not computed.
* Stochastic depth in training: a sample whose residual branch is dropped gets no branch
  computed at all (its rows are left out of the GEMMs), instead of computing the branch and
  multiplying it by zero. The per-sample mask is drawn exactly as mmcv's ``drop_path`` draws it.

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

from ..utils.drop_path import skip_dropped_samples
from ..utils.onednn_linear import linear_rows, onednn_applies, onednn_linear


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

    The common case (no active dropout or DropPath, no LayerScale) writes ``identity + bias``
    once and lets the GEMM accumulate ``x @ W^T`` into it (``addmm_``, beta=1): one memory
    pass instead of the bias copy of ``addmm``, a new tensor for the branch and the add. With
    oneDNN (fp32 CPU inference) the GEMM writes a new tensor and the shortcut is added in place.

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
        or _active_dropout(drop_path)  # the layer skips dropped samples before calling this
        or not isinstance(layer_scale, nn.Identity)
        or torch.is_autocast_enabled(x.device.type)  # keep the shortcut in full precision
    ):
        return identity + drop_path(layer_scale(dropout(linear(x))))
    if onednn_applies(x, linear):  # fp32 CPU inference
        return onednn_linear(x, linear).add_(identity)  # a new tensor, summed in place
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


_NO_DROP_PATH = nn.Identity()


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

    def _qkv(
        self, x: torch.Tensor, num_queries: Optional[int] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        h, d = self.num_heads, self.head_dims
        if num_queries is None:
            qkv = linear_rows(x, self.qkv).reshape(B, N, 3, h, d)  # (B, N, 3, h, d)
            return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d), views
        # Queries of the first tokens only; keys and values of all (rows of one weight).
        C = self.embed_dims
        q = linear_rows(x[:, :num_queries], self.qkv, slice(0, C))  # (B, n, C)
        q = q.reshape(B, num_queries, h, d).transpose(1, 2)  # (B, h, n, d)
        kv = linear_rows(x, self.qkv, slice(C, 3 * C))  # (B, N, 2C)
        k, v = kv.reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, h, N, d)
        return q, k, v

    def _project(
        self,
        x: torch.Tensor,
        identity: Optional[torch.Tensor] = None,
        drop_path: Optional[nn.Module] = None,
    ) -> torch.Tensor:
        B, _, N, _ = x.shape
        # SDPA's output is (B, N, h, d) in memory, so this is a view, not a copy.
        x = x.transpose(1, 2).reshape(B, N, self.embed_dims)  # (B, N, C)
        drop_path = self.out_drop if drop_path is None else drop_path
        if identity is None:
            return drop_path(self.gamma1(self.proj_drop(self.proj(x))))
        return _residual_linear(identity, x, self.proj, self.proj_drop, self.gamma1, drop_path)

    def forward(
        self,
        x: torch.Tensor,
        identity: Optional[torch.Tensor] = None,
        num_queries: Optional[int] = None,
        drop_path: bool = True,
    ) -> torch.Tensor:
        """Attend. ``x``: (B, N, C) -> (B, n, C), n = ``num_queries`` or N.

        Args:
            x: The (normalized) tokens (B, N, C).
            identity: The shortcut (B, n, C) to add to the result, or None to return the
                residual branch alone. Defaults to None.
            num_queries: Compute only the outputs of the first ``num_queries`` tokens; None
                for all. Defaults to None.
            drop_path: Apply this module's stochastic depth. Defaults to True.
        """
        q, k, v = self._qkv(x, num_queries)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, h, n, d)
        return self._project(out, identity, None if drop_path else _NO_DROP_PATH)

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
        drop_path: bool = True,
    ) -> torch.Tensor:
        """(B, N, C) -> (B, N, C).

        Args:
            x: The (normalized) tokens (B, N, C).
            identity: The shortcut (B, N, C) to add to the result, or None to return the
                residual branch alone. Defaults to None.
            reuse_identity: ``identity`` is a temporary of the caller: without autograd the
                result is written into its memory. Defaults to False.
            drop_path: Apply this module's stochastic depth. Defaults to True.
        """
        fc1, act, drop1 = self.layers[0]
        fc2, drop2 = self.layers[1], self.layers[2]
        no_grad = not torch.is_grad_enabled()
        if type(act) is nn.GELU and onednn_applies(x, fc1):  # fp32 CPU inference
            h = onednn_linear(x, fc1, gelu=act.approximate)  # GELU fused into the GEMM
        else:
            h = fc1(x)  # (B, N, feedforward_channels)
            if no_grad and type(act) is nn.GELU:
                h = torch.ops.aten.gelu_(h, approximate=act.approximate)  # in place; erf
            else:
                h = act(h)
        h = drop1(h)
        drop_path = self.dropout_layer if drop_path else _NO_DROP_PATH
        if identity is None:
            return drop_path(self.gamma2(drop2(fc2(h))))
        return _residual_linear(
            identity, h, fc2, drop2, self.gamma2, drop_path, inplace=reuse_identity and no_grad
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

    @staticmethod
    def _residual(identity, x, norm, module, drop_path, **kwargs) -> torch.Tensor:
        """``identity + module(norm(x))``; dropped samples (stochastic depth) are skipped."""
        if _active_dropout(drop_path):

            def branch(t: torch.Tensor) -> torch.Tensor:
                return module(norm(t), drop_path=False, **kwargs)

            return skip_dropped_samples(identity, x, branch, drop_path.drop_prob)
        return module(norm(x), identity=identity, **kwargs)

    def _forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        identity = x if num_queries is None else x[:, :num_queries]  # (B, n, C)
        # A new tensor: the input is never modified.
        x = self._residual(
            identity, x, self.ln1, self.attn, self.attn.out_drop, num_queries=num_queries
        )
        return self._residual(x, x, self.ln2, self.ffn, self.ffn.dropout_layer, reuse_identity=True)

    def forward(self, x: torch.Tensor, num_queries: Optional[int] = None) -> torch.Tensor:
        """(B, N, C) -> (B, n, C).

        Args:
            x: The tokens (B, N, C).
            num_queries: Compute only the first ``num_queries`` output tokens (they still
                attend to all N tokens); None for all. Defaults to None.
        """
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return checkpoint(self._forward, x, num_queries, use_reentrant=False)
        return self._forward(x, num_queries)

    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning the attention probabilities (B, h, N, N)."""
        out, attn = self.attn.forward_with_attention(self.ln1(x))
        x = x + out
        return x + self.ffn(self.ln2(x)), attn
