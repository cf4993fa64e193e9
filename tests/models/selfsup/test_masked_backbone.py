"""The mask token of MaskedVisionTransformer / MaskedDistilledVisionTransformer."""

import pytest
import torch

from mmdeit.models import (
    DistilledVisionTransformer,
    MaskedDistilledVisionTransformer,
    MaskedVisionTransformer,
    VisionTransformer,
)

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
PAIRS = [
    (MaskedDistilledVisionTransformer, DistilledVisionTransformer),
    (MaskedVisionTransformer, VisionTransformer),
]


def build(cls, **kwargs):
    kwargs = dict(dict(arch=ARCH, img_size=16, patch_size=4, out_type='raw'), **kwargs)
    torch.manual_seed(0)
    model = cls(**kwargs)
    model.init_weights()
    return model.eval()


def plain_twin(masked, plain_cls, **kwargs):
    """The plain backbone with the masked one's weights (all but the mask token)."""
    plain = build(plain_cls, **kwargs)
    weights = {k: v for k, v in masked.state_dict().items() if k != 'mask_token'}
    plain.load_state_dict(weights, strict=True)
    return plain


@pytest.mark.parametrize('fast_path', [True, False])
@pytest.mark.parametrize('masked_cls, plain_cls', PAIRS)
def test_nothing_masked_is_the_plain_backbone(masked_cls, plain_cls, fast_path):
    masked = build(masked_cls, fast_path=fast_path)
    assert set(masked.state_dict()) - set(plain_twin(masked, plain_cls).state_dict()) == {
        'mask_token'
    }
    plain = plain_twin(masked, plain_cls, fast_path=fast_path)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = plain(x)[0]
        assert torch.equal(masked(x)[0], want)  # no mask: the parent's forward
        assert torch.equal(masked(x, torch.zeros(3, 4, 4, dtype=torch.bool))[0], want)
        assert torch.equal(masked(x, mask=torch.zeros(3, 16, dtype=torch.long))[0], want)


@pytest.mark.parametrize('masked_cls, plain_cls', PAIRS)
def test_masked_patches_become_the_mask_token(masked_cls, plain_cls):
    masked = build(masked_cls)
    k = masked.num_extra_tokens
    x = torch.randn(2, 3, 16, 16)
    mask = torch.rand(2, 4, 4) < 0.5
    mask[0, 0, 0], mask[1, 3, 3] = True, False
    with torch.no_grad():
        tokens, _ = masked._embed(x, mask)  # (B, k+16, C), after the position embedding
        plain_tokens, _ = masked._embed(x)
    flat = mask.flatten(1)  # (B, 16)
    pos = masked.pos_embed[0, k:].detach()  # (16, C)
    for b in range(2):
        for i in range(16):
            if flat[b, i]:
                want = masked.mask_token[0, 0].detach() + pos[i]
                torch.testing.assert_close(tokens[b, k + i], want, rtol=0, atol=1e-6)
            else:
                assert torch.equal(tokens[b, k + i], plain_tokens[b, k + i])
    assert torch.equal(tokens[:, :k], plain_tokens[:, :k])  # cls/dist never masked
    # What is under a masked patch does not matter any more; under an unmasked one it does.
    hidden = x.clone()
    hidden[0, :, :4, :4] = 100.0  # patch (0, 0) of image 0, masked
    with torch.no_grad():
        assert torch.equal(masked(hidden, mask)[0], masked(x, mask)[0])
        shown = x.clone()
        shown[1, :, 12:, 12:] = 100.0  # patch (3, 3) of image 1, not masked
        assert not torch.allclose(masked(shown, mask)[0][1], masked(x, mask)[0][1])


def test_mask_token_is_learnt_and_an_embedding():
    masked = build(MaskedDistilledVisionTransformer, out_type='featmap').train()
    x = torch.randn(2, 3, 16, 16)
    masked(x, torch.ones(2, 4, 4, dtype=torch.bool))[0].sum().backward()
    assert masked.mask_token.grad is not None and masked.mask_token.grad.abs().sum() > 0
    masked.zero_grad()
    masked(x)[0].sum().backward()  # unmasked: the token takes no part
    assert masked.mask_token.grad is None or not masked.mask_token.grad.any()
    assert masked.get_layer_depth('backbone.mask_token', 'backbone.') == (0, 4)
    frozen = build(MaskedDistilledVisionTransformer, frozen_stages=1)
    assert not frozen.mask_token.requires_grad
    assert not frozen.train().mask_token.requires_grad
    assert build(MaskedDistilledVisionTransformer).mask_token.std() > 0  # trunc-normal init


def test_other_input_sizes_take_their_own_patch_grid():
    masked = build(MaskedDistilledVisionTransformer, out_type='featmap')
    with torch.no_grad():
        out = masked(torch.randn(1, 3, 24, 16), torch.ones(1, 6, 4, dtype=torch.bool))[0]
    assert out.shape == (1, 32, 6, 4)


def test_bad_masks_are_refused_naming_the_argument():
    masked = build(MaskedDistilledVisionTransformer)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r'mask must have shape \(B, H, W\) = \(2, 4, 4\).*got'):
        masked(x, torch.zeros(2, 8, 8, dtype=torch.bool))  # a pixel mask, not a patch mask
    with pytest.raises(ValueError, match=r'mask must have shape .*got \(1, 4, 4\)'):
        masked(x, torch.zeros(1, 4, 4, dtype=torch.bool))  # another batch size
    with pytest.raises(ValueError, match='mask must hold only 0 and 1'):
        masked(x, torch.full((2, 4, 4), 2))
    with pytest.raises(TypeError, match='mask must be a torch.Tensor'):
        masked(x, [[0] * 16] * 2)


@pytest.mark.parametrize('plain_cls', [DistilledVisionTransformer, VisionTransformer])
def test_a_mask_for_a_backbone_without_mask_token_is_refused(plain_cls):
    plain = build(plain_cls)
    with pytest.raises(ValueError, match='mask was given to .* which has no mask token'):
        plain(torch.randn(2, 3, 16, 16), torch.zeros(2, 4, 4, dtype=torch.bool))
