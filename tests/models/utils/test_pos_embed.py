"""pos_embed_grid: the square patch grid of a checkpoint's position embedding."""

import pytest
import torch

from mmdeit.models.utils import pos_embed_grid, resize_pos_embed


@pytest.mark.parametrize('num_extra_tokens', [1, 2])
@pytest.mark.parametrize('side', [1, 14, 24])
def test_square_grid(num_extra_tokens, side):
    pos_embed = torch.zeros(1, num_extra_tokens + side * side, 8)
    assert pos_embed_grid(pos_embed, num_extra_tokens) == (side, side)


def test_grid_feeds_resize_pos_embed():
    pos_embed = torch.randn(1, 2 + 14 * 14, 8)
    grid = pos_embed_grid(pos_embed, 2)
    assert resize_pos_embed(pos_embed, grid, (24, 24), num_extra_tokens=2).shape == (1, 578, 8)


@pytest.mark.parametrize(
    'shape, num_extra_tokens',
    [
        ((1, 1 + 4 * 8, 8), 1),  # a 4x8 grid
        ((1, 1 + 14 * 14, 8), 2),  # a cls-only checkpoint read as distilled
        ((1, 2, 8), 2),  # no patch tokens
        ((2, 1 + 16, 8), 1),  # not (1, L, C)
        ((1 + 16, 8), 1),
    ],
)
def test_non_square_is_a_value_error_naming_the_field(shape, num_extra_tokens):
    with pytest.raises(ValueError, match=r'^pos_embed of shape .*extra tokens plus a square'):
        pos_embed_grid(torch.zeros(shape), num_extra_tokens)
    with pytest.raises(ValueError, match=r'^backbone\.pos_embed of shape'):
        pos_embed_grid(torch.zeros(shape), num_extra_tokens, name='backbone.pos_embed')
