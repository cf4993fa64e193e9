"""Position-embedding helpers shared by the forward pass, checkpoint loading and the converters."""

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def resize_pos_embed(
    pos_embed: torch.Tensor,
    src_shape: Sequence[int],
    dst_shape: Sequence[int],
    mode: str = 'bicubic',
    num_extra_tokens: int = 1,
) -> torch.Tensor:
    """Resize a ViT position embedding to another patch grid.

    The first ``num_extra_tokens`` entries (cls token, and dist token for DeiT) are kept as they
    are; the rest is reshaped to the ``src_shape`` grid and interpolated to ``dst_shape``.

    Args:
        pos_embed: Position embedding of shape (1, num_extra_tokens + H*W, C).
        src_shape: (H, W) of the patch grid ``pos_embed`` was made for.
        dst_shape: (H', W') of the wanted patch grid.
        mode: Interpolation mode of :func:`torch.nn.functional.interpolate`.
            Defaults to 'bicubic'.
        num_extra_tokens: Number of leading non-patch tokens. Defaults to 1.

    Returns:
        The embedding of shape (1, num_extra_tokens + H'*W', C), in the input's dtype.
    """
    src_h, src_w = int(src_shape[0]), int(src_shape[1])
    dst_h, dst_w = int(dst_shape[0]), int(dst_shape[1])
    if (src_h, src_w) == (dst_h, dst_w):
        return pos_embed
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f'pos_embed must have shape (1, L, C), got {tuple(pos_embed.shape)}')
    _, length, channels = pos_embed.shape
    if length != num_extra_tokens + src_h * src_w:
        raise ValueError(
            f'pos_embed has {length} tokens, but num_extra_tokens={num_extra_tokens} plus a '
            f'{src_h}x{src_w} grid needs {num_extra_tokens + src_h * src_w}'
        )
    extra_tokens = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:].reshape(1, src_h, src_w, channels)  # (1, H, W, C)
    grid = grid.permute(0, 3, 1, 2)  # (1, C, H, W)
    # Bicubic interpolation is only implemented for float32 on every device.
    grid = F.interpolate(grid.float(), size=(dst_h, dst_w), align_corners=False, mode=mode)
    grid = grid.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, H'*W', C)
    return torch.cat((extra_tokens, grid), dim=1)


def pos_embed_grid(
    pos_embed: torch.Tensor, num_extra_tokens: int = 1, name: str = 'pos_embed'
) -> Tuple[int, int]:
    """The square patch grid a checkpoint's position embedding was trained for.

    Checkpoints do not record their input size; ViT/DeiT ones are trained on square images, so
    the grid is read from the number of patch tokens.

    Args:
        pos_embed: Position embedding of shape (1, num_extra_tokens + H*W, C).
        num_extra_tokens: Number of leading non-patch tokens (1 for the cls token, 2 with DeiT's
            dist token). Defaults to 1.
        name: What to call ``pos_embed`` in the error, e.g. its state-dict key.
            Defaults to 'pos_embed'.

    Returns:
        (H, W) of the patch grid, with H == W.

    Raises:
        ValueError: ``pos_embed`` is not (1, L, C), or its patch tokens do not form a square grid.
    """
    shape = tuple(pos_embed.shape)
    num_patches = shape[1] - num_extra_tokens if len(shape) == 3 else 0
    side = math.isqrt(num_patches) if num_patches > 0 else 0
    if len(shape) != 3 or shape[0] != 1 or side == 0 or side * side != num_patches:
        raise ValueError(
            f'{name} of shape {shape} does not hold {num_extra_tokens} extra tokens plus a '
            'square patch grid'
        )
    return side, side
