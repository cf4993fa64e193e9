"""Model settings and configs read from mmdeit state dicts; pos_embed resizing."""

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled

from mmdeit.converters import (
    convert_checkpoint,
    infer_arch,
    resize_checkpoint_pos_embed,
    suggest_model_cfg,
    to_mmdeit,
)

from .conftest import NUM_CLASSES, TINY, load_and_compare, mm_classifier, noisy, timm_tiny


def test_resize_to_384_matches_timm_at_384():
    # DeiT's 224 -> 384 patch grid (14x14 -> 24x24) on a narrow, shallow model to stay fast.
    narrow = dict(
        patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=NUM_CLASSES
    )
    theirs = noisy(VisionTransformerDistilled(img_size=224, **narrow))
    checkpoint = convert_checkpoint(theirs.state_dict(), img_size=384)
    pos_embed = checkpoint['state_dict']['backbone.pos_embed']
    assert pos_embed.shape == (1, 2 + 24 * 24, 32)
    assert checkpoint['meta']['img_size'] == 384
    # timm at 384 with its own resample (bicubic; antialias off, as in the official DeiT code).
    timm_384 = VisionTransformerDistilled(img_size=384, **narrow).eval()
    timm_state = dict(theirs.state_dict())
    timm_state['pos_embed'] = resample_abs_pos_embed(
        timm_state['pos_embed'], new_size=(24, 24), num_prefix_tokens=2, antialias=False
    )
    timm_384.load_state_dict(timm_state, strict=True)
    x = torch.randn(2, 3, 384, 384)
    with torch.no_grad():
        want = timm_384(x)
    ours = mm_classifier(img_size=384, patch_size=16)
    load_and_compare(ours, checkpoint['state_dict'], want, x)
    # The backbone's own resize on load (224 checkpoint into a 384 model) agrees.
    at_224 = convert_checkpoint(theirs.state_dict())['state_dict']
    ours.load_state_dict(at_224, strict=True)
    torch.testing.assert_close(ours.backbone.pos_embed.data, pos_embed, rtol=0, atol=1e-6)


def test_resize_checks_img_size():
    state_dict = to_mmdeit(timm_tiny().state_dict())
    with pytest.raises(ValueError, match='img_size'):
        resize_checkpoint_pos_embed(state_dict, 36)
    resized = resize_checkpoint_pos_embed(state_dict, (32, 64))
    assert resized['backbone.pos_embed'].shape == (1, 2 + 4 * 8, 32)
    assert state_dict['backbone.pos_embed'].shape == (1, 2 + 4 * 4, 32)  # input untouched


@pytest.mark.parametrize('distilled', [True, False])
def test_infer_arch_reads_the_weights(distilled):
    info = infer_arch(to_mmdeit(timm_tiny(distilled).state_dict()))
    assert info == dict(
        distilled=distilled,
        arch={**TINY, 'num_heads': 1},  # the weights do not tell; 64-dim heads are assumed
        patch_size=8,
        img_size=32,
        num_classes=NUM_CLASSES,
        qkv_bias=True,
    )


def test_non_square_pos_embed_is_named():
    state_dict = to_mmdeit(timm_tiny().state_dict())
    state_dict['backbone.pos_embed'] = torch.zeros(1, 2 + 4 * 8, 32)  # a 4x8 grid
    with pytest.raises(ValueError, match=r'backbone\.pos_embed of shape \(1, 34, 32\)'):
        infer_arch(state_dict)
    with pytest.raises(ValueError, match=r'backbone\.pos_embed .*square patch grid'):
        resize_checkpoint_pos_embed(state_dict, 64)


def test_suggested_cfg_for_backbone_only_checkpoint_has_no_head():
    state_dict = to_mmdeit(timm_tiny().state_dict())
    backbone_only = {k: v for k, v in state_dict.items() if k.startswith('backbone.')}
    assert suggest_model_cfg(backbone_only)['head'] is None


def test_suggested_cfg_for_a_teacher_with_other_classes_loads_strictly():
    from mmengine.registry import DefaultScope

    from mmdeit.registry import MODELS

    state_dict = dict(to_mmdeit(timm_tiny().state_dict()))
    rows = state_dict['head.layers.head_dist.weight'].shape[0] + 3  # the teacher's label space
    state_dict['head.layers.head_dist.weight'] = torch.randn(rows, TINY['embed_dims'])
    state_dict['head.layers.head_dist.bias'] = torch.randn(rows)
    cfg = suggest_model_cfg(state_dict)
    assert cfg['head']['teacher_num_classes'] == rows and cfg['head']['inference_mode'] == 'cls'
    with DefaultScope.overwrite_default_scope('mmdeit'):
        model = MODELS.build(cfg)
    model.load_state_dict(state_dict, strict=True)
