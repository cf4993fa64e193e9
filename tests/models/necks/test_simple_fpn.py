import pytest
import torch
import torch.nn as nn
from mmengine.registry import DefaultScope

import mmdeit.models.necks  # noqa: F401  (registers SimpleFPN even before mmdeit.models does)
from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.necks import SimpleFPN
from mmdeit.registry import MODELS

from ...conftest import TINY_ARCH


def _featmap(channels=32, h=4, w=6, batch=2):
    return torch.randn(batch, channels, h, w)


def test_levels_have_the_vitdet_strides_and_channels():
    neck = MODELS.build(dict(type='SimpleFPN', in_channels=32, out_channels=16))
    outs = neck((_featmap(h=4, w=6),))
    # A stride-16 map of 4x6 is a 64x96 image: strides 4, 8, 16, 32, 64.
    assert [tuple(o.shape) for o in outs] == [
        (2, 16, 16, 24),
        (2, 16, 8, 12),
        (2, 16, 4, 6),
        (2, 16, 2, 3),
        (2, 16, 1, 2),
    ]


def test_on_the_backbone_featmap_strides_follow_the_image():
    backbone = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=64, patch_size=16, out_type='featmap', out_indices=(1, 3)
    )
    neck = SimpleFPN(in_channels=32, out_channels=8, num_outs=6)  # uses the last output
    img = torch.randn(1, 3, 64, 128)
    outs = neck(backbone(img))
    assert len(outs) == 6
    strides = [(64 // o.shape[2], 128 // o.shape[3]) for o in outs]
    assert strides == [(4, 4), (8, 8), (16, 16), (32, 32), (64, 64), (64, 128)]


def test_subset_of_scales_and_plain_tensor_input():
    neck = SimpleFPN(
        in_channels=30, out_channels=8, scale_factors=(2, 1), num_outs=2, norm_cfg=None
    )
    outs = neck(_featmap(channels=30, h=5, w=5))
    assert [tuple(o.shape[2:]) for o in outs] == [(10, 10), (5, 5)]
    assert neck.lateral_convs[0].conv.bias is not None  # no norm: convs get a bias
    assert isinstance(neck.rescales[1], nn.Identity)


def test_in_index_selects_the_backbone_output():
    neck = SimpleFPN(in_channels=32, out_channels=8, in_index=0, num_outs=4)
    first, second = _featmap(h=4, w=4), _featmap(channels=16, h=2, w=2)
    outs = neck((first, second))
    assert outs[2].shape[2:] == first.shape[2:]


def test_norms_and_activation_are_applied():
    neck = SimpleFPN(
        in_channels=32,
        out_channels=8,
        norm_cfg=dict(type='GN', num_groups=4),
        act_cfg=dict(type='ReLU'),
    )
    assert isinstance(neck.lateral_convs[0].norm, nn.GroupNorm)
    assert isinstance(neck.rescales[0][1], nn.GroupNorm)
    assert neck.output_convs[0].conv.bias is None  # norm follows: no conv bias
    assert all((o >= 0).all() for o in neck(_featmap()))


def test_default_ln2d_resolves_under_other_default_scopes():
    for scope in ('mmengine', 'mmdet', 'mmseg'):
        with DefaultScope.overwrite_default_scope(scope):
            neck = SimpleFPN(in_channels=32, out_channels=8)
        assert type(neck.lateral_convs[0].norm).__name__ == 'LayerNorm2d'


def test_gradient_reaches_every_parameter_and_the_input():
    neck = SimpleFPN(in_channels=32, out_channels=8)
    x = _featmap().requires_grad_()
    sum(o.square().mean() for o in neck((x,))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in neck.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(in_channels=0), TypeError, 'in_channels'),
        (dict(in_channels=32.0), TypeError, 'in_channels'),
        (dict(out_channels=-1), TypeError, 'out_channels'),
        (dict(in_channels=30), ValueError, 'divisible by 4'),
        (dict(in_channels=31, scale_factors=(2.0, 1.0), num_outs=2), ValueError, 'divisible by 2'),
        (dict(scale_factors=(8.0, 1.0)), ValueError, 'scale_factors entry 8.0'),
        (dict(scale_factors=(1.0, 2.0), num_outs=2), ValueError, 'strictly decreasing'),
        (dict(scale_factors=()), TypeError, 'scale_factors'),
        (dict(scale_factors=2.0), TypeError, 'scale_factors'),
        (dict(num_outs=3), ValueError, 'num_outs'),
        (dict(in_index='last'), TypeError, 'in_index'),
        (dict(norm_cfg=dict(type='NoSuchNorm')), ValueError, 'NoSuchNorm'),
        (dict(norm_cfg=dict(type='LN')), ValueError, 'LN2d'),
        (dict(norm_cfg='LN2d'), TypeError, 'norm_cfg'),
        (dict(act_cfg='ReLU'), TypeError, 'act_cfg'),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        SimpleFPN(**{'in_channels': 32, **kwargs})


def test_bad_input_raises():
    neck = SimpleFPN(in_channels=32, out_channels=8)
    with pytest.raises(ValueError, match='featmap'):
        neck((torch.randn(2, 32),))  # a cls_token output, not a featmap
    with pytest.raises(ValueError, match=r'\(B, 32, H, W\)'):
        neck((_featmap(channels=16),))
    with pytest.raises(IndexError, match='in_index'):
        SimpleFPN(in_channels=32, in_index=2)((_featmap(),))


def test_mmdeit_models_exports_simple_fpn():
    """Configs only have ``custom_imports=dict(imports=['mmdeit'])``: ``import mmdeit`` must
    import the necks (``from .necks import *`` in mmdeit/models/__init__.py)."""
    import mmdeit.models

    assert getattr(mmdeit.models, 'SimpleFPN', None) is SimpleFPN
