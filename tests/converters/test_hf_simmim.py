"""HF ``DeiT/ViTForMaskedImageModeling`` (SimMIM) <-> mmdeit ``DeiTSimMIM``, and HF's shift.

HF's DeiT decoder reads ``sequence_output[:, 1:-1]``: the dist token and the first N-1 patch
tokens, so patch p is reconstructed from the token of patch p-1 (patch 0 from the dist token).
mmdeit decodes the N patch tokens, each patch from its own token.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    DeiTConfig,
    DeiTForMaskedImageModeling,
    ViTConfig,
    ViTForMaskedImageModeling,
)

from mmdeit.converters import convert_checkpoint, detect_format
from mmdeit.converters.hf import hf_to_mmdeit, mmdeit_to_hf
from mmdeit.registry import MODELS

from .conftest import HF_LAYOUT, HF_TINY, TINY, noisy

PATCH = HF_TINY['patch_size']  # 8: 32x32 inputs, a 4x4 grid of patches
GRID = HF_TINY['image_size'] // PATCH


def mm_simmim(distilled: bool = True) -> torch.nn.Module:
    """The mmdeit SimMIM model matching the tiny HF masked-image-modeling models."""
    backbone = 'MaskedDistilledVisionTransformer' if distilled else 'MaskedVisionTransformer'
    return MODELS.build(
        dict(
            type='mmdeit.DeiTSimMIM',
            backbone=dict(
                type=f'mmdeit.{backbone}',
                arch=TINY,
                img_size=HF_TINY['image_size'],
                patch_size=PATCH,
                out_type='featmap',
            ),
            neck=dict(type='mmpretrain.SimMIMLinearDecoder', in_channels=32, encoder_stride=PATCH),
            head=dict(
                type='mmpretrain.SimMIMHead',
                patch_size=PATCH,
                loss=dict(type='mmpretrain.PixelReconstructionLoss', criterion='L1', channel=3),
            ),
        )
    ).eval()


def hf_config(cls):
    return cls(**HF_TINY, encoder_stride=PATCH)


def blocks(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the patches in raster order, (B, N, 3 * PATCH * PATCH)."""
    return F.unfold(img, PATCH, stride=PATCH).transpose(1, 2)  # (B, N, 3*p*p)


@pytest.fixture(scope='module')
def deit_pair():
    torch.manual_seed(0)
    theirs = noisy(DeiTForMaskedImageModeling(hf_config(DeiTConfig)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    ours = mm_simmim()
    ours.load_state_dict(checkpoint['state_dict'], strict=True)
    # The converter's suggested config is this model too (num_heads: 64-dim heads assumed).
    suggested = MODELS.build(checkpoint['meta']['model_cfg'])
    assert type(suggested.backbone).__name__ == 'MaskedDistilledVisionTransformer'
    suggested.load_state_dict(checkpoint['state_dict'], strict=True)
    return theirs, ours, checkpoint


def test_hf_simmim_keys_convert_both_ways(deit_pair):
    theirs, _, checkpoint = deit_pair
    assert detect_format(theirs.state_dict()) == 'hf'
    state_dict = checkpoint['state_dict']
    assert torch.equal(state_dict['backbone.mask_token'], theirs.deit.embeddings.mask_token)
    assert torch.equal(state_dict['neck.decoder.0.weight'], theirs.decoder[0].weight)
    fresh = DeiTForMaskedImageModeling(hf_config(DeiTConfig)).eval()
    fresh.load_state_dict(convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT), strict=True)
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # Without the decoder (a bare DeiTModel(use_mask_token=True)) the mask token is dropped,
    # as before: a classifier has no place for it.
    bare = {k: v for k, v in theirs.state_dict().items() if not k.startswith('decoder.')}
    assert 'backbone.mask_token' not in hf_to_mmdeit(bare)


def test_hf_simmim_encoder_matches_with_a_mask(deit_pair):
    theirs, ours, _ = deit_pair
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, GRID * GRID) < 0.5  # HF's bool_masked_pos, (B, N)
    with torch.no_grad():
        want = theirs.deit(x, bool_masked_pos=mask).last_hidden_state  # (B, N+2, C)
        ours.backbone.out_type = 'raw'
        try:
            got = ours.backbone(x, mask.reshape(2, GRID, GRID))[0]  # (B, N+2, C)
        finally:
            ours.backbone.out_type = 'featmap'
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_hf_decoder_reads_tokens_shifted_by_one_patch(deit_pair):
    """HF's reconstruction = mmdeit's decoder on HF's token selection [:, 1:-1]; mmdeit's own
    decodes each patch from its own token, so HF's patch p is mmdeit's patch p-1."""
    theirs, ours, _ = deit_pair
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, GRID * GRID) < 0.5
    with torch.no_grad():
        out = theirs(x, bool_masked_pos=mask)
        tokens = theirs.deit(x, bool_masked_pos=mask).last_hidden_state  # (B, N+2, C)
        hf_selection = tokens[:, 1:-1].transpose(1, 2).reshape(2, 32, GRID, GRID)  # (B, C, h, w)
        torch.testing.assert_close(ours.neck(hf_selection), out.reconstruction, rtol=0, atol=1e-5)

        ours_rec = ours.reconstruct(x, mask)  # (B, 3, H, W), from the tokens [:, 2:]
        own = tokens[:, 2:].transpose(1, 2).reshape(2, 32, GRID, GRID)  # (B, C, h, w)
        torch.testing.assert_close(ours_rec, ours.neck(own), rtol=0, atol=1e-5)
    assert (ours_rec - out.reconstruction).abs().max() > 1e-2  # they do differ
    hf_blocks, our_blocks = blocks(out.reconstruction), blocks(ours_rec)  # (B, N, 3*p*p)
    torch.testing.assert_close(hf_blocks[:, 1:], our_blocks[:, :-1], rtol=0, atol=1e-5)
    with torch.no_grad():  # HF's first patch comes from the dist token
        dist = ours.neck(tokens[:, 1, :, None, None])  # (B, 3, p, p)
    torch.testing.assert_close(hf_blocks[:, 0], dist.flatten(1), rtol=0, atol=1e-5)


def test_hf_loss_formula_matches_mmdeit_loss_on_the_same_reconstruction(deit_pair):
    theirs, ours, _ = deit_pair
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, GRID * GRID) < 0.5
    mask[:, 0] = True
    with torch.no_grad():
        out = theirs(x, bool_masked_pos=mask)
        got = ours.head.loss(out.reconstruction, x, mask.reshape(2, GRID, GRID))
    torch.testing.assert_close(got, out.loss, rtol=1e-5, atol=0)


def test_hf_vit_simmim_round_trip_and_same_reconstruction():
    """ViT has one extra token and HF decodes [:, 1:], the patch tokens: same as mmdeit."""
    torch.manual_seed(0)
    theirs = noisy(ViTForMaskedImageModeling(hf_config(ViTConfig)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    assert 'backbone.dist_token' not in checkpoint['state_dict']
    ours = mm_simmim(distilled=False)
    ours.load_state_dict(checkpoint['state_dict'], strict=True)
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, GRID * GRID) < 0.5
    with torch.no_grad():
        out = theirs(x, bool_masked_pos=mask)
        torch.testing.assert_close(ours.reconstruct(x, mask), out.reconstruction, rtol=0, atol=1e-5)
    back = mmdeit_to_hf(checkpoint['state_dict'], layout=HF_LAYOUT)
    ViTForMaskedImageModeling(hf_config(ViTConfig)).load_state_dict(back, strict=True)
