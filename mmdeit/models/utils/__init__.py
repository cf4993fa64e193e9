from .pos_embed import pos_embed_grid, resize_pos_embed

__all__ = ['pos_embed_grid', 'resize_pos_embed']
