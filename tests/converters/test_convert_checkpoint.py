"""The public API: convert_checkpoint, to_mmdeit / from_mmdeit, mmpretrain passthrough."""

import pytest
import torch
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

import mmdeit
from mmdeit.converters import (
    FORMATS,
    TARGETS,
    convert_checkpoint,
    detect_format,
    from_mmdeit,
    mmdeit_to_timm,
    to_mmdeit,
)

from .conftest import NUM_CLASSES, TINY, load_and_compare, mm_classifier, noisy, timm_tiny


def test_mmpretrain_checkpoint_passes_through():
    theirs = MMPRETRAIN_MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8),
            head=dict(type='DeiTClsHead', num_classes=NUM_CLASSES, in_channels=32),
        )
    )
    theirs.eval()
    noisy(theirs)
    saved = {'meta': {'epoch': 3}, 'state_dict': theirs.state_dict()}
    assert detect_format(saved) == 'mmpretrain'
    checkpoint = convert_checkpoint(saved)
    assert checkpoint['meta']['epoch'] == 3
    assert checkpoint['meta']['mmdeit_version'] == mmdeit.__version__
    assert checkpoint['state_dict'].keys() == theirs.state_dict().keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = theirs(x, mode='tensor')
    load_and_compare(mm_classifier(), checkpoint['state_dict'], want, x)
    # Our own output is recognised as mmdeit, and converting it again changes nothing.
    assert detect_format(checkpoint) == 'mmdeit'
    again = convert_checkpoint(checkpoint)
    assert again['meta']['converted_from'] == 'mmdeit'
    assert all(torch.equal(again['state_dict'][k], v) for k, v in checkpoint['state_dict'].items())
    # A bare backbone state dict gets the 'backbone.' prefix.
    bare = theirs.backbone.state_dict()
    assert set(to_mmdeit(bare)) == {f'backbone.{k}' for k in bare}


@pytest.mark.parametrize('to', [t for t in TARGETS if t != 'mmdeit'])
def test_from_mmdeit_is_what_convert_checkpoint_returns(to):
    original = timm_tiny().state_dict()
    ours = to_mmdeit(original)
    want = convert_checkpoint(original, to=to)
    got = from_mmdeit(ours, to)
    assert got.keys() == want.keys()
    if to == 'official':
        got, want = got['model'], want['model']
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_bad_input_raises_clear_errors():
    assert 'hf' in FORMATS and 'official' in TARGETS
    timm_sd = dict(timm_tiny().state_dict())
    timm_sd['blocks.0.extra.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match=r'blocks\.0\.extra\.weight'):
        convert_checkpoint(timm_sd)
    state_dict = to_mmdeit(timm_tiny().state_dict())
    with pytest.raises(ValueError, match='to must be one of'):
        convert_checkpoint(state_dict, to='onnx')
    with pytest.raises(ValueError, match='to must be one of'):
        from_mmdeit(state_dict, to='mmdeit')
    with pytest.raises(ValueError, match='fmt must be one of'):
        to_mmdeit(state_dict, fmt='keras')
    with pytest.raises(ValueError, match='no known counterpart'):
        mmdeit_to_timm({**state_dict, 'neck.fc.weight': torch.zeros(1)})
