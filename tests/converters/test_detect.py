"""Telling checkpoint layouts apart, and finding the state dict inside a checkpoint."""

import pytest
import torch

from mmdeit.converters import detect_format, to_mmdeit
from mmdeit.converters.detect import extract_state_dict, strip_module_prefix

from .conftest import timm_tiny


def test_module_prefix_is_stripped():
    wrapped = {f'module.{k}': v for k, v in timm_tiny().state_dict().items()}
    assert detect_format({'model': wrapped}) == 'official'
    assert 'backbone.dist_token' in to_mmdeit({'model': wrapped})
    assert strip_module_prefix({'module.a': 1, 'b': 2}) == {'module.a': 1, 'b': 2}


@pytest.mark.parametrize(
    'key, fmt',
    [
        ('blocks.0.norm1.weight', 'timm'),
        ('deit.encoder.layer.0.layernorm_before.weight', 'hf'),
        ('vit.layers.0.layernorm_before.weight', 'hf'),
        ('encoder.layer.0.layernorm_before.weight', 'hf'),
        ('backbone.layers.0.ln1.weight', 'mmpretrain'),
        ('layers.0.ln1.weight', 'mmpretrain'),
    ],
)
def test_layout_is_read_from_the_first_layer_norm(key, fmt):
    state_dict = {key: torch.zeros(1), 'other': torch.zeros(1)}
    assert detect_format(state_dict) == fmt
    assert detect_format({'state_dict': state_dict, 'meta': {}}) == fmt
    assert extract_state_dict({'state_dict': state_dict}) == state_dict


def test_wrappers_and_meta_decide_official_and_mmdeit():
    timm_sd = {'blocks.0.norm1.weight': torch.zeros(1)}
    assert detect_format({'model': timm_sd}) == 'official'
    assert detect_format({'state_dict': timm_sd}) == 'timm'
    mm_sd = {'backbone.layers.0.ln1.weight': torch.zeros(1)}
    assert detect_format({'state_dict': mm_sd, 'meta': {'epoch': 3}}) == 'mmpretrain'
    assert detect_format({'state_dict': mm_sd, 'meta': {'mmdeit_version': '0.1.0'}}) == 'mmdeit'
    cfg = "model = dict(type='mmdeit.DistilledVisionTransformer')"
    assert detect_format({'state_dict': mm_sd, 'meta': {'cfg': cfg}}) == 'mmdeit'


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match='dict'):
        detect_format([1, 2])
    with pytest.raises(ValueError, match='unknown checkpoint format.*foo.bar'):
        detect_format({'foo.bar': torch.zeros(1), 'baz': torch.zeros(1)})
