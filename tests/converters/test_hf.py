"""HF transformers DeiT/ViT checkpoints -> mmdeit and back, with logit parity."""

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
)

from mmdeit.converters import convert_checkpoint, detect_format, to_mmdeit
from mmdeit.converters.hf import hf_to_mmdeit, mmdeit_to_hf

from .conftest import HF_LAYOUT, HF_TINY, load_and_compare, mm_classifier, noisy, timm_tiny


def test_hf_with_teacher_matches_hf_logits_and_round_trips():
    theirs = noisy(DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_TINY)))
    assert detect_format(theirs.state_dict()) == 'hf'
    checkpoint = convert_checkpoint(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    load_and_compare(mm_classifier(), checkpoint['state_dict'], want, x)
    # Back to HF: loads strictly into a fresh model and gives the same logits.
    fresh = DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_TINY)).eval()
    fresh.load_state_dict(convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize('layout', ['legacy', 'v5'])
def test_hf_layouts_round_trip_at_key_level(layout):
    state_dict = to_mmdeit(timm_tiny().state_dict())
    hf = mmdeit_to_hf(state_dict, layout=layout)
    marker = (
        'deit.layers.0.attention.q_proj.weight'
        if layout == 'v5'
        else 'deit.encoder.layer.0.attention.attention.query.weight'
    )
    assert marker in hf
    assert hf[marker].shape == (32, 32)
    assert detect_format(hf) == 'hf'
    back = hf_to_mmdeit(hf)
    assert back.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(back[key], value), key
    with pytest.raises(ValueError, match='layout'):
        mmdeit_to_hf(state_dict, layout='v4')


def test_hf_qkv_is_stacked_query_key_value():
    state_dict = to_mmdeit(timm_tiny().state_dict())
    hf = mmdeit_to_hf(state_dict, layout='legacy')
    base = 'deit.encoder.layer.1.attention.attention.'
    qkv = state_dict['backbone.layers.1.attn.qkv.weight']
    for i, part in enumerate(('query', 'key', 'value')):
        assert torch.equal(hf[f'{base}{part}.weight'], qkv[32 * i : 32 * (i + 1)])
    del hf[f'{base}key.bias']
    with pytest.raises(ValueError, match='HF layer 1 has only 2 of query/key/value bias'):
        hf_to_mmdeit(hf)


def test_hf_cls_only_deit_gets_zero_head_dist_and_cls_mode():
    theirs = noisy(DeiTForImageClassification(DeiTConfig(**HF_TINY)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    state_dict = checkpoint['state_dict']
    assert not state_dict['head.layers.head_dist.weight'].any()
    assert checkpoint['meta']['model_cfg']['head']['inference_mode'] == 'cls'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    load_and_compare(mm_classifier(inference_mode='cls'), state_dict, want, x)
    fresh = DeiTForImageClassification(DeiTConfig(**HF_TINY))
    fresh.load_state_dict(convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT), strict=True)


def test_hf_vit_non_distilled_into_cls_only_model():
    theirs = noisy(ViTForImageClassification(ViTConfig(**HF_TINY)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    assert 'backbone.dist_token' not in checkpoint['state_dict']
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    load_and_compare(mm_classifier(distilled=False), checkpoint['state_dict'], want, x)
    back = convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT)
    ViTForImageClassification(ViTConfig(**HF_TINY)).load_state_dict(back, strict=True)


def test_hf_pooler_and_bare_model_are_handled():
    theirs = DeiTModel(DeiTConfig(**HF_TINY), add_pooling_layer=True)
    state_dict = to_mmdeit(theirs.state_dict())  # keys without the 'deit.' prefix
    assert not any('pooler' in k for k in state_dict)
    assert 'head.layers.head.weight' not in state_dict
    backbone = mm_classifier().backbone
    backbone.load_state_dict({k[len('backbone.') :]: v for k, v in state_dict.items()}, strict=True)


def test_hf_unknown_keys_are_named():
    hf = mmdeit_to_hf(to_mmdeit(timm_tiny().state_dict()))
    hf['deit.encoder.layer.0.adapter.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'of the HF state dict .*adapter\.weight'):
        hf_to_mmdeit(hf)
    with pytest.raises(ValueError, match='not an HF DeiT/ViT state dict'):
        hf_to_mmdeit({'blocks.0.norm1.weight': torch.zeros(1)})
