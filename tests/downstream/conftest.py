"""Fixtures of the downstream tests: a checkpoint saved by an mmdeit classifier."""

from pathlib import Path

import pytest
import torch
from mmengine.registry import DefaultScope
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.heads import DeiTClsHead
from mmdeit.models.utils.pos_embed import resize_pos_embed

from ..conftest import TINY_ARCH

CONFIG_DIR = Path(__file__).parents[2] / 'configs' / 'downstream'
CLS_IMG_SIZE = 32  # classifier input: a 2x2 patch grid, resized on load to the downstream one


@pytest.fixture
def classifier_checkpoint(tmp_path):
    """(path, classifier) of an mmengine-style checkpoint of an mmdeit DeiT classifier."""
    # Built as an mmdeit classification config builds it: mmpretrain's ImageClassifier in the
    # default scope 'mmdeit'.
    with DefaultScope.overwrite_default_scope('mmdeit'):
        classifier = MMPRETRAIN_MODELS.build(
            dict(
                type='ImageClassifier',
                backbone=dict(
                    type='DistilledVisionTransformer',
                    arch=TINY_ARCH,
                    img_size=CLS_IMG_SIZE,
                    patch_size=16,
                ),
                head=dict(type='DeiTClsHead', num_classes=5, in_channels=32),
            )
        )
        classifier.init_weights()
    # mmdeit's, not mmpretrain's
    assert type(classifier.backbone) is DistilledVisionTransformer
    assert type(classifier.head) is DeiTClsHead
    path = tmp_path / 'deit_classifier.pth'
    torch.save(
        {
            'meta': {'epoch': 300, 'dataset_meta': {'classes': list('abcde')}},
            'state_dict': classifier.state_dict(),
        },
        path,
    )
    return str(path), classifier


def assert_backbone_matches_classifier(backbone, classifier) -> None:
    """Every backbone tensor equals the classifier's; pos_embed is the resized one."""
    expected = classifier.backbone.state_dict()
    loaded = backbone.state_dict()
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        if name != 'pos_embed':
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)
    src = classifier.backbone.patch_resolution
    resized = resize_pos_embed(
        expected['pos_embed'], src, backbone.patch_resolution, 'bicubic', num_extra_tokens=2
    )
    assert loaded['pos_embed'].shape != expected['pos_embed'].shape
    torch.testing.assert_close(loaded['pos_embed'], resized)
    # the cls and dist entries are kept as they are
    torch.testing.assert_close(
        loaded['pos_embed'][:, :2], expected['pos_embed'][:, :2], rtol=0, atol=0
    )
