"""Attention maps of the class and distillation tokens: rollout, per-head maps, overlays.

The math works on the attention probabilities that
:meth:`mmdeit.models.backbones.VisionTransformer.forward_with_details` returns, one
(B, heads, N, N) tensor per layer with N = num_extra_tokens + H*W. Rollout follows Abnar &
Zuidema, `Quantifying Attention Flow in Transformers <https://arxiv.org/abs/2005.00928>`_.
"""

from typing import List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

HEAD_FUSIONS = ('mean', 'max', 'min')
Panel = Tuple[str, np.ndarray]


def fuse_heads(attention: torch.Tensor, head_fusion: str = 'mean') -> torch.Tensor:
    """Reduce (B, heads, N, N) attention over the heads to (B, N, N).

    Args:
        attention: Attention probabilities of one layer.
        head_fusion: 'mean', 'max' or 'min'. Defaults to 'mean'.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f'head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}')
    if attention.dim() != 4:
        raise ValueError(f'attention must be (B, heads, N, N), got {tuple(attention.shape)}')
    if head_fusion == 'mean':
        return attention.mean(dim=1)
    return attention.amax(dim=1) if head_fusion == 'max' else attention.amin(dim=1)


def attention_rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = 'mean', residual_weight: float = 0.5
) -> torch.Tensor:
    """Attention rollout over layers.

    Each layer's head-fused attention ``A`` is mixed with the identity for the residual path,
    ``Â = (1 - w) A + w I``, renormalised so rows sum to 1, and the layers are chained:
    ``R = Â_L @ ... @ Â_1``. ``R[b, i, j]`` is how much output token i draws on input token j.

    Args:
        attentions: One (B, heads, N, N) tensor per layer, first layer first.
        head_fusion: How heads are combined, see :func:`fuse_heads`. Defaults to 'mean'.
        residual_weight: Weight ``w`` of the identity, in [0, 1]. Defaults to 0.5.

    Returns:
        Rollout of shape (B, N, N), in float32.
    """
    if not attentions:
        raise ValueError('attentions must hold at least one layer')
    if not 0.0 <= residual_weight <= 1.0:
        raise ValueError(f'residual_weight must be in [0, 1], got {residual_weight}')
    rollout = None
    for attention in attentions:
        fused = fuse_heads(attention.float(), head_fusion)  # (B, N, N)
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        mixed = (1.0 - residual_weight) * fused + residual_weight * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    return rollout


def token_attention_map(
    attention: torch.Tensor,
    token_index: int,
    num_extra_tokens: int,
    patch_resolution: Sequence[int],
) -> torch.Tensor:
    """The attention of one token to the patches, as a map on the patch grid.

    Args:
        attention: (..., N, N) attention (or rollout), e.g. (B, heads, N, N) or (B, N, N).
        token_index: Row to read: 0 for the cls token, 1 for the dist token.
        num_extra_tokens: Number of non-patch tokens before the patches.
        patch_resolution: (H, W) of the patch grid, H*W = N - num_extra_tokens.

    Returns:
        (..., H, W) tensor, the leading dims of ``attention`` minus the last two.
    """
    h, w = int(patch_resolution[0]), int(patch_resolution[1])
    n = attention.shape[-1]
    if n != num_extra_tokens + h * w:
        raise ValueError(
            f'attention has {n} tokens, but num_extra_tokens={num_extra_tokens} '
            f'plus a {h}x{w} grid makes {num_extra_tokens + h * w}'
        )
    if not 0 <= token_index < n:
        raise ValueError(f'token_index {token_index} is out of range for {n} tokens')
    row = attention[..., token_index, num_extra_tokens:]  # (..., H*W)
    return row.reshape(*row.shape[:-1], h, w)  # (..., H, W)


def normalize_map(heat: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] (a constant map becomes all zeros)."""
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(heat.max())
    if high - low <= 0:
        return np.zeros_like(heat)
    return (heat - low) / (high - low)


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinearly resize an (H, W, 3) uint8 image to ``size`` = (H', W')."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    tensor = F.interpolate(tensor, size=size, mode='bilinear', align_corners=False)
    return tensor[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()  # (H', W', 3)


def overlay_heatmap(
    image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = 'jet'
) -> np.ndarray:
    """Colour a map, scale it to the image and blend the two.

    Args:
        image: (H, W, 3) uint8 RGB image.
        heat: (h, w) map; min-max normalised, then bilinearly upsampled to (H, W).
        alpha: Weight of the heat map in the blend, in [0, 1]. Defaults to 0.5.
        cmap: A matplotlib colormap name. Defaults to 'jet'.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    from matplotlib import colormaps

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be (H, W, 3), got {image.shape}')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    heat_t = torch.as_tensor(normalize_map(heat))[None, None]  # (1, 1, h, w)
    heat_t = F.interpolate(heat_t, size=image.shape[:2], mode='bilinear', align_corners=False)
    colored = colormaps[cmap](heat_t[0, 0].clamp(0, 1).numpy())[..., :3] * 255.0  # (H, W, 3)
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colored
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def attention_panels(
    image: np.ndarray,
    attentions: Sequence[torch.Tensor],
    patch_resolution: Sequence[int],
    tokens: Mapping[str, int],
    num_extra_tokens: int,
    layer: int = -1,
    head_fusion: str = 'mean',
    alpha: float = 0.5,
    cmap: str = 'jet',
) -> List[List[Panel]]:
    """Overlays for each token: its rollout, then one map per head of ``layer``.

    Args:
        image: (H, W, 3) uint8 RGB image the model saw (at any display size).
        attentions: One (B, heads, N, N) tensor per layer; batch item 0 is drawn.
        patch_resolution: (H, W) of the patch grid.
        tokens: Display name -> token index, e.g. ``{'cls': 0, 'dist': 1}``.
        num_extra_tokens: Number of non-patch tokens.
        layer: Layer whose per-head maps are drawn. Defaults to -1 (the last).
        head_fusion: Head fusion of the rollout. Defaults to 'mean'.
        alpha: Overlay weight. Defaults to 0.5.
        cmap: Colormap. Defaults to 'jet'.

    Returns:
        One row per token of (title, (H, W, 3) uint8) panels: the input, the rollout, each head.
    """
    num_layers = len(attentions)
    if not -num_layers <= layer < num_layers:
        raise ValueError(f'layer {layer} is out of range for {num_layers} layers')
    rollout = attention_rollout([a[:1] for a in attentions], head_fusion)  # (1, N, N)
    last = attentions[layer][:1].float()  # (1, heads, N, N)
    layer_index = layer % num_layers
    rows = []
    for name, index in tokens.items():
        roll = token_attention_map(rollout, index, num_extra_tokens, patch_resolution)[0]
        heads = token_attention_map(last, index, num_extra_tokens, patch_resolution)[0]
        row = [
            (f'{name}: input', image),
            (f'{name}: rollout', overlay_heatmap(image, roll.cpu().numpy(), alpha, cmap)),
        ]
        row += [
            (
                f'{name}: L{layer_index} head {h}',
                overlay_heatmap(image, heads[h].cpu().numpy(), alpha, cmap),
            )
            for h in range(heads.shape[0])
        ]
        rows.append(row)
    return rows


def save_panel_grid(
    rows: Sequence[Sequence[Panel]],
    out_file: str,
    title_height: int = 20,
    font_size: float = 9.0,
    dpi: int = 100,
) -> Tuple[int, int]:
    """Save rows of equally sized panels, each under its title, as one PNG.

    The PNG is exactly ``cols * W`` by ``rows * (H + title_height)`` pixels, where (H, W) is
    the panel size and ``cols`` the longest row.

    Args:
        rows: Rows of (title, (H, W, 3) uint8) panels, all of one size.
        out_file: Path of the PNG.
        title_height: Pixels above each panel for its title. Defaults to 20.
        font_size: Title font size in points. Defaults to 9.
        dpi: Resolution used to lay out the figure. Defaults to 100.

    Returns:
        (width, height) of the saved image in pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows or not all(rows):
        raise ValueError('rows must be a non-empty list of non-empty rows')
    panel_h, panel_w = rows[0][0][1].shape[:2]
    for row in rows:
        for title, panel in row:
            if panel.shape[:2] != (panel_h, panel_w):
                raise ValueError(
                    f'panel {title!r} is {panel.shape[:2]}, expected {(panel_h, panel_w)}'
                )
    cols = max(len(row) for row in rows)
    cell_h = panel_h + title_height
    width, height = cols * panel_w, len(rows) * cell_h
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        for c, (title, panel) in enumerate(row):
            bottom = (height - r * cell_h - cell_h) / height
            ax = fig.add_axes((c * panel_w / width, bottom, panel_w / width, panel_h / height))
            ax.imshow(panel, interpolation='nearest', aspect='auto')
            ax.set_axis_off()
            fig.text(
                (c + 0.5) * panel_w / width,
                (height - r * cell_h - title_height / 2) / height,
                title,
                ha='center',
                va='center',
                fontsize=font_size,
            )
    fig.savefig(out_file, dpi=dpi, format='png')
    return width, height
