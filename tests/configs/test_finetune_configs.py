"""The 384 fine-tuning configs start the whole classifier from the 224 checkpoint: backbone and
head(s), pos_embed resized; only a head of another shape starts afresh (official fine-tuning)."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmdeit.models.classifiers import student_model_cfg
from mmdeit.models.utils.pos_embed import resize_pos_embed
from mmdeit.registry import MODELS

from ..conftest import TINY_ARCH

CONFIGS = Path(__file__).parents[2] / 'configs' / 'deit'
FINETUNE = sorted(p.name for p in CONFIGS.glob('*384px.py'))
PRETRAIN_SIZE, FINETUNE_SIZE = 32, 48  # 2x2 -> 3x3 patch grid, as 14x14 -> 24x24


def _tiny(config: str, img_size: int, num_classes: int = 1000) -> dict:
    """The config's student, on the tiny arch at ``img_size``, as a model config."""
    cfg = Config.fromfile(str(CONFIGS / config))
    model = student_model_cfg(cfg.model)
    model['backbone'].update(arch=TINY_ARCH, img_size=img_size)
    model['head'].update(in_channels=TINY_ARCH['embed_dims'], num_classes=num_classes)
    if img_size == PRETRAIN_SIZE:  # the 224 run: trained from scratch
        model['init_cfg'] = [c for c in model['init_cfg'] if c['type'] != 'Pretrained']
    return model


def _build(model_cfg: dict):
    with DefaultScope.overwrite_default_scope('mmdeit'):
        return MODELS.build(model_cfg)


@pytest.mark.parametrize('config', FINETUNE)
def test_the_whole_classifier_starts_from_the_224_checkpoint(config, tmp_path):
    assert len(FINETUNE) == 2
    pretrained = _build(_tiny(config, PRETRAIN_SIZE))
    pretrained.init_weights()
    path = tmp_path / 'epoch_300.pth'
    torch.save({'meta': {}, 'state_dict': pretrained.state_dict()}, path)

    model_cfg = _tiny(config, FINETUNE_SIZE)
    pretrained_init = model_cfg['init_cfg'][-1]
    assert pretrained_init['type'] == 'Pretrained'
    assert 'prefix' not in pretrained_init  # the whole classifier, not the backbone only
    pretrained_init['checkpoint'] = str(path)
    model = _build(model_cfg)
    model.init_weights()

    expected = pretrained.state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    head_keys = [k for k in expected if k.startswith('head.')]
    assert head_keys  # the head(s) are loaded, not left at their random initialisation
    for key, value in expected.items():
        if key != 'backbone.pos_embed':
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    extra = 2 if 'distilled' in config else 1
    grid = model.backbone.patch_resolution
    resized = resize_pos_embed(
        expected['backbone.pos_embed'], (2, 2), grid, 'bicubic', num_extra_tokens=extra
    )
    assert grid == (3, 3)
    torch.testing.assert_close(loaded['backbone.pos_embed'], resized)


@pytest.mark.parametrize('config', FINETUNE)
def test_a_head_of_another_class_count_starts_afresh(config, tmp_path):
    pretrained = _build(_tiny(config, PRETRAIN_SIZE))
    pretrained.init_weights()
    path = tmp_path / 'epoch_300.pth'
    torch.save({'state_dict': pretrained.state_dict()}, path)
    model_cfg = _tiny(config, FINETUNE_SIZE, num_classes=7)
    model_cfg['init_cfg'][-1]['checkpoint'] = str(path)
    model = _build(model_cfg)
    model.init_weights()
    loaded, expected = model.state_dict(), pretrained.state_dict()
    for key in loaded:
        if key.startswith('head.'):
            assert loaded[key].shape[0] == 7  # left at its initialisation, not loaded
        elif key != 'backbone.pos_embed':
            torch.testing.assert_close(loaded[key], expected[key], rtol=0, atol=0, msg=key)
