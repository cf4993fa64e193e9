"""timm and official checkpoints -> mmdeit and back, with logit parity."""

import pytest
import timm
import torch

from mmdeit.converters import convert_checkpoint, detect_format, to_mmdeit
from mmdeit.converters.timm import mmdeit_to_timm, timm_to_mmdeit
from mmdeit.registry import MODELS

from .conftest import load_and_compare, mm_classifier, noisy, timm_tiny


def test_timm_deit_tiny_distilled_matches_timm_logits():
    theirs = noisy(
        timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, num_classes=10)
    )
    checkpoint = convert_checkpoint(theirs.state_dict())
    meta = checkpoint['meta']
    assert detect_format(theirs.state_dict()) == 'timm'
    assert meta['converted_from'] == 'timm' and meta['distilled']
    assert meta['arch'] == dict(
        embed_dims=192, num_layers=12, num_heads=3, feedforward_channels=768
    )
    ours = MODELS.build(meta['model_cfg']).eval()  # the suggested config fits the weights
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = theirs(x)
    load_and_compare(ours, checkpoint['state_dict'], want, x)


def test_timm_non_distilled_deit_tiny_into_cls_only_model():
    theirs = noisy(timm.create_model('deit_tiny_patch16_224', pretrained=False, num_classes=10))
    checkpoint = convert_checkpoint(theirs.state_dict())
    state_dict = checkpoint['state_dict']
    assert 'backbone.dist_token' not in state_dict
    assert 'head.layers.head.weight' in state_dict and not checkpoint['meta']['distilled']
    cfg = checkpoint['meta']['model_cfg']
    assert cfg['backbone']['type'] == 'mmpretrain.VisionTransformer'
    assert cfg['head']['type'] == 'mmpretrain.VisionTransformerClsHead'
    ours = MODELS.build(cfg).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        want = theirs(x)
    load_and_compare(ours, state_dict, want, x)
    with pytest.raises((RuntimeError, ValueError), match='dist_token|extra tokens'):
        distilled = mm_classifier(arch='deit-tiny', img_size=224, patch_size=16, num_classes=10)
        distilled.load_state_dict(state_dict, strict=True)


def test_official_format_is_timm_under_model():
    theirs = timm_tiny()
    official = {'model': theirs.state_dict()}
    assert detect_format(official) == 'official'
    checkpoint = convert_checkpoint(official)
    assert checkpoint['meta']['converted_from'] == 'official'
    assert checkpoint['state_dict'].keys() == to_mmdeit(theirs.state_dict()).keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x)
    load_and_compare(mm_classifier(), checkpoint['state_dict'], want, x)


@pytest.mark.parametrize('distilled', [True, False])
def test_to_timm_round_trips(distilled):
    theirs = timm_tiny(distilled)
    original = theirs.state_dict()
    back = convert_checkpoint(convert_checkpoint(original), to='timm')
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    again = timm_tiny(distilled)
    again.load_state_dict(back, strict=True)
    official = convert_checkpoint(original, to='official')
    assert official['model'].keys() == original.keys()


def test_layer_scale_and_key_order_survive_the_round_trip():
    # CaiT-style layer scale (timm's ls1/ls2.gamma) maps to mmdeit's gamma1/gamma2.
    timm_sd = {
        **timm_tiny().state_dict(),
        'blocks.1.ls1.gamma': torch.ones(32),
        'blocks.1.ls2.gamma': torch.ones(32),
    }
    ours = timm_to_mmdeit(timm_sd)
    assert 'backbone.layers.1.attn.gamma1.weight' in ours
    assert 'backbone.layers.1.ffn.gamma2.weight' in ours
    assert ours['backbone.layers.0.ffn.layers.0.0.weight'] is timm_sd['blocks.0.mlp.fc1.weight']
    assert list(mmdeit_to_timm(ours)) == list(timm_sd)


def test_unknown_keys_are_named():
    timm_sd = {**timm_tiny().state_dict(), 'blocks.0.extra.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match=r'1 keys of the timm .*blocks\.0\.extra\.weight'):
        timm_to_mmdeit(timm_sd)
    ours = {**to_mmdeit(timm_tiny().state_dict()), 'neck.fc.weight': torch.zeros(1)}
    with pytest.raises(ValueError, match=r'mmdeit \(to timm\).*neck\.fc\.weight'):
        mmdeit_to_timm(ours)
