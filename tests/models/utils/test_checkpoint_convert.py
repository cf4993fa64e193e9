"""Checkpoint conversion: official/timm/HF/mmpretrain -> mmdeit and back, with logit parity."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import transformers
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer as TimmViT
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTModel,
    ViTConfig,
    ViTForImageClassification,
)

from mmdeit.models.utils.checkpoint_convert import (
    convert_checkpoint,
    detect_format,
    mmdeit_to_timm,
    resize_checkpoint_pos_embed,
    suggest_model_cfg,
    to_mmdeit,
)
from mmdeit.models.utils.hf_checkpoint_convert import hf_to_mmdeit, mmdeit_to_hf
from mmdeit.registry import MODELS

ROOT = Path(__file__).resolve().parents[3]
TOOL = ROOT / 'tools' / 'model_converters' / 'deit_to_mmdeit.py'
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
NUM_CLASSES = 5
HF_LAYOUT = 'v5' if int(transformers.__version__.split('.')[0]) >= 5 else 'legacy'
HF_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=NUM_CLASSES,
    layer_norm_eps=1e-6,
)


def _noisy(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every parameter so that zero/one inits (biases, norms, tokens) carry signal."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def _timm_tiny(distilled: bool = True) -> torch.nn.Module:
    cls = VisionTransformerDistilled if distilled else TimmViT
    return _noisy(
        cls(
            img_size=32,
            patch_size=8,
            embed_dim=32,
            depth=2,
            num_heads=2,
            mlp_ratio=2,
            num_classes=NUM_CLASSES,
        )
    )


def _mm_classifier(
    distilled: bool = True,
    arch=TINY,
    img_size: int = 32,
    patch_size: int = 8,
    num_classes: int = NUM_CLASSES,
    **head_kwargs,
) -> torch.nn.Module:
    backbone = 'mmdeit.DistilledVisionTransformer' if distilled else 'mmpretrain.VisionTransformer'
    head = 'mmdeit.DeiTClsHead' if distilled else 'mmpretrain.VisionTransformerClsHead'
    in_channels = arch['embed_dims'] if isinstance(arch, dict) else 192
    return MODELS.build(
        dict(
            type='mmpretrain.ImageClassifier',
            backbone=dict(type=backbone, arch=arch, img_size=img_size, patch_size=patch_size),
            head=dict(type=head, num_classes=num_classes, in_channels=in_channels, **head_kwargs),
        )
    ).eval()


def _load_and_compare(model, state_dict, reference, x, atol=1e-5):
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        got = model(x, mode='tensor')
    torch.testing.assert_close(got, reference, rtol=0, atol=atol)
    return got


def test_timm_deit_tiny_distilled_matches_timm_logits():
    theirs = _noisy(
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
    _load_and_compare(ours, checkpoint['state_dict'], want, x)


def test_timm_non_distilled_deit_tiny_into_cls_only_model():
    theirs = _noisy(timm.create_model('deit_tiny_patch16_224', pretrained=False, num_classes=10))
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
    _load_and_compare(ours, state_dict, want, x)
    with pytest.raises((RuntimeError, ValueError), match='dist_token|extra tokens'):
        _mm_classifier(
            arch='deit-tiny', img_size=224, patch_size=16, num_classes=10
        ).load_state_dict(state_dict, strict=True)


def test_official_format_is_timm_under_model():
    theirs = _timm_tiny()
    official = {'model': theirs.state_dict()}
    assert detect_format(official) == 'official'
    checkpoint = convert_checkpoint(official)
    assert checkpoint['meta']['converted_from'] == 'official'
    assert checkpoint['state_dict'].keys() == to_mmdeit(theirs.state_dict()).keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x)
    _load_and_compare(_mm_classifier(), checkpoint['state_dict'], want, x)


@pytest.mark.parametrize('distilled', [True, False])
def test_to_timm_round_trips(distilled):
    theirs = _timm_tiny(distilled)
    original = theirs.state_dict()
    back = convert_checkpoint(convert_checkpoint(original), to='timm')
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    again = _timm_tiny(distilled)
    again.load_state_dict(back, strict=True)
    official = convert_checkpoint(original, to='official')
    assert official['model'].keys() == original.keys()


def test_hf_with_teacher_matches_hf_logits_and_round_trips():
    theirs = _noisy(DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_TINY)))
    assert detect_format(theirs.state_dict()) == 'hf'
    checkpoint = convert_checkpoint(theirs.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    _load_and_compare(_mm_classifier(), checkpoint['state_dict'], want, x)
    # Back to HF: loads strictly into a fresh model and gives the same logits.
    fresh = DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_TINY)).eval()
    fresh.load_state_dict(convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize('layout', ['legacy', 'v5'])
def test_hf_layouts_round_trip_at_key_level(layout):
    state_dict = to_mmdeit(_timm_tiny().state_dict())
    hf = mmdeit_to_hf(state_dict, layout=layout)
    marker = (
        'deit.layers.0.attention.q_proj.weight'
        if layout == 'v5'
        else 'deit.encoder.layer.0.attention.attention.query.weight'
    )
    assert marker in hf
    assert hf[marker].shape == (32, 32)
    back = hf_to_mmdeit(hf)
    assert back.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(back[key], value), key
    with pytest.raises(ValueError, match='layout'):
        mmdeit_to_hf(state_dict, layout='v4')


def test_hf_cls_only_deit_gets_zero_head_dist_and_cls_mode():
    theirs = _noisy(DeiTForImageClassification(DeiTConfig(**HF_TINY)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    state_dict = checkpoint['state_dict']
    assert not state_dict['head.layers.head_dist.weight'].any()
    assert checkpoint['meta']['model_cfg']['head']['inference_mode'] == 'cls'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    _load_and_compare(_mm_classifier(inference_mode='cls'), state_dict, want, x)
    fresh = DeiTForImageClassification(DeiTConfig(**HF_TINY))
    fresh.load_state_dict(convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT), strict=True)


def test_hf_vit_non_distilled_into_cls_only_model():
    theirs = _noisy(ViTForImageClassification(ViTConfig(**HF_TINY)))
    checkpoint = convert_checkpoint(theirs.state_dict())
    assert 'backbone.dist_token' not in checkpoint['state_dict']
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x).logits
    _load_and_compare(_mm_classifier(distilled=False), checkpoint['state_dict'], want, x)
    back = convert_checkpoint(checkpoint, to='hf', hf_layout=HF_LAYOUT)
    ViTForImageClassification(ViTConfig(**HF_TINY)).load_state_dict(back, strict=True)


def test_hf_pooler_and_bare_model_are_handled():
    theirs = DeiTModel(DeiTConfig(**HF_TINY), add_pooling_layer=True)
    state_dict = to_mmdeit(theirs.state_dict())  # keys without the 'deit.' prefix
    assert not any('pooler' in k for k in state_dict)
    assert 'head.layers.head.weight' not in state_dict
    backbone = _mm_classifier().backbone
    backbone.load_state_dict({k[len('backbone.') :]: v for k, v in state_dict.items()}, strict=True)


def test_mmpretrain_checkpoint_passes_through():
    theirs = MMPRETRAIN_MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8),
            head=dict(type='DeiTClsHead', num_classes=NUM_CLASSES, in_channels=32),
        )
    )
    theirs.eval()
    _noisy(theirs)
    saved = {'meta': {'epoch': 3}, 'state_dict': theirs.state_dict()}
    assert detect_format(saved) == 'mmpretrain'
    checkpoint = convert_checkpoint(saved)
    assert checkpoint['meta']['epoch'] == 3
    assert checkpoint['state_dict'].keys() == theirs.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x, mode='tensor')
    _load_and_compare(_mm_classifier(), checkpoint['state_dict'], want, x)
    # Our own output is recognised as mmdeit, and converting it again changes nothing.
    assert detect_format(checkpoint) == 'mmdeit'
    again = convert_checkpoint(checkpoint)
    assert again['meta']['converted_from'] == 'mmdeit'
    assert all(torch.equal(again['state_dict'][k], v) for k, v in checkpoint['state_dict'].items())
    # A bare backbone state dict gets the 'backbone.' prefix.
    bare = theirs.backbone.state_dict()
    assert set(to_mmdeit(bare)) == {f'backbone.{k}' for k in bare}


def test_resize_to_384_matches_timm_at_384():
    # DeiT's 224 -> 384 patch grid (14x14 -> 24x24) on a narrow, shallow model to stay fast.
    narrow = dict(
        patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=NUM_CLASSES
    )
    theirs = _noisy(VisionTransformerDistilled(img_size=224, **narrow))
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
    ours = _mm_classifier(img_size=384, patch_size=16)
    _load_and_compare(ours, checkpoint['state_dict'], want, x)
    # The backbone's own resize on load (224 checkpoint into a 384 model) agrees.
    at_224 = convert_checkpoint(theirs.state_dict())['state_dict']
    ours.load_state_dict(at_224, strict=True)
    torch.testing.assert_close(ours.backbone.pos_embed.data, pos_embed, rtol=0, atol=1e-6)


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match='dict'):
        detect_format([1, 2])
    with pytest.raises(ValueError, match='unknown checkpoint format.*foo.bar'):
        detect_format({'foo.bar': torch.zeros(1), 'baz': torch.zeros(1)})
    timm_sd = dict(_timm_tiny().state_dict())
    timm_sd['blocks.0.extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'blocks\.0\.extra\.weight'):
        convert_checkpoint(timm_sd)
    state_dict = to_mmdeit(_timm_tiny().state_dict())
    with pytest.raises(ValueError, match='img_size'):
        resize_checkpoint_pos_embed(state_dict, 36)
    with pytest.raises(ValueError, match='to must be one of'):
        convert_checkpoint(state_dict, to='onnx')
    with pytest.raises(ValueError, match='fmt must be one of'):
        to_mmdeit(state_dict, fmt='keras')
    with pytest.raises(ValueError, match='no known counterpart'):
        mmdeit_to_timm({**state_dict, 'neck.fc.weight': torch.zeros(1)})


def test_module_prefix_is_stripped():
    wrapped = {f'module.{k}': v for k, v in _timm_tiny().state_dict().items()}
    assert detect_format({'model': wrapped}) == 'official'
    assert 'backbone.dist_token' in to_mmdeit({'model': wrapped})


def test_suggested_cfg_for_backbone_only_checkpoint_has_no_head():
    state_dict = to_mmdeit(_timm_tiny().state_dict())
    backbone_only = {k: v for k, v in state_dict.items() if k.startswith('backbone.')}
    assert suggest_model_cfg(backbone_only)['head'] is None


def _run_tool_in_process(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location('deit_to_mmdeit', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_cli_converts_and_writes_atomically(tmp_path):
    theirs = _timm_tiny()
    src = tmp_path / 'deit_timm.pth'
    torch.save({'model': theirs.state_dict()}, src)
    dst = tmp_path / 'out' / 'deit_mmdeit.pth'
    result = subprocess.run(
        [sys.executable, str(TOOL), str(src), str(dst), '--img-size', '64'],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    written = torch.load(dst, map_location='cpu', weights_only=True)
    want = convert_checkpoint({'model': theirs.state_dict()}, img_size=64)
    assert written['meta']['converted_from'] == 'official'
    assert written['state_dict'].keys() == want['state_dict'].keys()
    assert all(torch.equal(written['state_dict'][k], v) for k, v in want['state_dict'].items())
    assert sorted(p.name for p in dst.parent.iterdir()) == ['deit_mmdeit.pth']  # no tmp left

    # The reverse, in process: back to timm.
    back = tmp_path / 'back.pth'
    assert _run_tool_in_process([str(dst), str(back), '--to', 'timm']) == 0
    timm_sd = torch.load(back, map_location='cpu', weights_only=True)
    assert timm_sd['pos_embed'].shape == (1, 2 + 8 * 8, 32)

    # Unknown layouts and unsafe pickles fail with status 1 and write nothing.
    odd = tmp_path / 'odd.pth'
    torch.save({'encoder.weight': torch.zeros(2)}, odd)
    assert _run_tool_in_process([str(odd), str(tmp_path / 'x.pth')]) == 1
    pickled = tmp_path / 'pickled.pth'
    torch.save({'model': theirs.state_dict(), 'args': argparse.Namespace(lr=1.0)}, pickled)
    assert _run_tool_in_process([str(pickled), str(tmp_path / 'y.pth')]) == 1
    assert not (tmp_path / 'x.pth').exists() and not (tmp_path / 'y.pth').exists()
    assert _run_tool_in_process([str(pickled), str(tmp_path / 'y.pth'), '--unsafe-load']) == 0
