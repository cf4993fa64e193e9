"""Pictures of what the model attends to."""

from .attention import (
    attention_panels,
    attention_rollout,
    fuse_heads,
    normalize_map,
    overlay_heatmap,
    resize_image,
    save_panel_grid,
    token_attention_map,
)

__all__ = [
    'attention_panels',
    'attention_rollout',
    'fuse_heads',
    'normalize_map',
    'overlay_heatmap',
    'resize_image',
    'save_panel_grid',
    'token_attention_map',
]
