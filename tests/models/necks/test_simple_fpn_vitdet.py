"""SimpleFPN built with mmdet ViTDet's signature (``backbone_channel`` + an ``in_channels`` list).

mmdet 3.3 ships its ViTDet project (``projects/ViTDet/vitdet/simple_fpn.py``) outside the
installed package, so its class cannot be imported here: the key names and shapes below are
read from that source, and the forward pass is checked against a functional transcription of
its ``forward`` (fpn1..fpn4, then lateral and output convs, then 1x1 max-pools, stride 2).
"""

import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import DefaultScope

import mmdeit.models.necks  # noqa: F401  (registers SimpleFPN)
from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.necks import SimpleFPN

from ...conftest import TINY_ARCH

# What mmdet's ViTDet configs write (vitdet_mask-rcnn_vit-b-mae_lsj-100e.py).
VITDET_NECK = dict(
    backbone_channel=768,
    in_channels=[192, 384, 768, 768],
    out_channels=256,
    num_outs=5,
    norm_cfg=dict(type='LN2d', requires_grad=True),
)


def _vitdet(c=32, out=8, **kwargs):
    return SimpleFPN(
        **{
            'backbone_channel': c,
            'in_channels': [c // 4, c // 2, c, c],
            'out_channels': out,
            'num_outs': 5,
            'norm_cfg': dict(type='LN2d', requires_grad=True),
            **kwargs,
        }
    )


def _mmdet_keys(c, out, in_channels):
    """State-dict keys and shapes of mmdet ViTDet's SimpleFPN with its LN2d norm."""
    keys = {
        'fpn1.0.weight': (c, c // 2, 2, 2),  # ConvTranspose2d(C, C/2, 2, 2)
        'fpn1.0.bias': (c // 2,),
        'fpn1.1.weight': (c // 2,),  # LN2d
        'fpn1.1.bias': (c // 2,),
        'fpn1.3.weight': (c // 2, c // 4, 2, 2),  # ConvTranspose2d(C/2, C/4, 2, 2)
        'fpn1.3.bias': (c // 4,),
        'fpn2.0.weight': (c, c // 2, 2, 2),
        'fpn2.0.bias': (c // 2,),
    }
    for i, ch in enumerate(in_channels):  # ConvModule(bias='auto': none before a norm)
        keys[f'lateral_convs.{i}.conv.weight'] = (out, ch, 1, 1)
        keys[f'lateral_convs.{i}.norm_layer.weight'] = (out,)
        keys[f'lateral_convs.{i}.norm_layer.bias'] = (out,)
    for i in range(len(in_channels)):
        keys[f'fpn_convs.{i}.conv.weight'] = (out, out, 3, 3)
        keys[f'fpn_convs.{i}.norm_layer.weight'] = (out,)
        keys[f'fpn_convs.{i}.norm_layer.bias'] = (out,)
    return keys


def _mmdet_forward(sd, x, num_outs, eps=1e-5):
    """mmdet ViTDet's SimpleFPN.forward, written with torch.nn.functional on a state dict."""

    def ln2d(t, prefix):  # mmdet's LN2d
        u = t.mean(1, keepdim=True)
        s = (t - u).pow(2).mean(1, keepdim=True)
        t = (t - u) / torch.sqrt(s + eps)
        return sd[prefix + 'weight'][:, None, None] * t + sd[prefix + 'bias'][:, None, None]

    def up(t, prefix):
        return F.conv_transpose2d(t, sd[prefix + 'weight'], sd[prefix + 'bias'], stride=2)

    levels = [
        up(F.gelu(ln2d(up(x, 'fpn1.0.'), 'fpn1.1.')), 'fpn1.3.'),
        up(x, 'fpn2.0.'),
        x,
        F.max_pool2d(x, kernel_size=2, stride=2),
    ]
    outs = []
    for i, level in enumerate(levels):
        lateral = F.conv2d(level, sd[f'lateral_convs.{i}.conv.weight'])
        lateral = ln2d(lateral, f'lateral_convs.{i}.norm_layer.')
        out = F.conv2d(lateral, sd[f'fpn_convs.{i}.conv.weight'], padding=1)
        outs.append(ln2d(out, f'fpn_convs.{i}.norm_layer.'))
    while len(outs) < num_outs:
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
    return outs


def test_state_dict_keys_are_mmdet_vitdets():
    neck = _vitdet(c=32, out=8)
    got = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    expected = _mmdet_keys(32, 8, [8, 16, 32, 32])
    assert list(got) == list(expected)  # same names, same order
    assert got == expected
    assert neck.in_channels == [8, 16, 32, 32] and neck.backbone_channel == 32


def test_an_mmdet_checkpoint_loads_strictly_and_computes_mmdets_forward():
    gen = torch.Generator().manual_seed(0)
    sd = {
        k: torch.randn(shape, generator=gen, dtype=torch.float64)
        for k, shape in _mmdet_keys(32, 8, [8, 16, 32, 32]).items()
    }
    neck = _vitdet(c=32, out=8).double()
    neck.load_state_dict(sd, strict=True)
    x = torch.randn(2, 32, 5, 6, generator=gen, dtype=torch.float64)
    outs = neck(x)  # a plain tensor: what mmdet's ViTDet backbone returns
    expected = _mmdet_forward(sd, x, num_outs=5)
    assert len(outs) == 5
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert neck((x,))[0].shape == outs[0].shape  # a tuple of maps works too


def test_mmdeit_weights_map_onto_the_vitdet_form():
    """The documented key mapping: same network, so same outputs."""
    torch.manual_seed(0)
    ours = SimpleFPN(in_channels=32, out_channels=8, norm_cfg=dict(type='LN2d', eps=1e-6))
    vitdet = _vitdet(c=32, out=8, norm_cfg=dict(type='LN2d', eps=1e-6))
    renamed = {}
    for key, value in ours.state_dict().items():
        key = key.replace('rescales.0.', 'fpn1.').replace('rescales.1.', 'fpn2.0.')
        key = key.replace('output_convs.', 'fpn_convs.').replace('.ln.', '.norm_layer.')
        renamed[key] = value
    vitdet.load_state_dict(renamed, strict=True)
    x = torch.randn(1, 32, 4, 4)
    for a, b in zip(ours(x), vitdet(x)):
        torch.testing.assert_close(a, b)


def test_vitdet_form_has_strides_4_to_64_on_the_backbone():
    backbone = DistilledVisionTransformer(
        arch=TINY_ARCH, img_size=64, patch_size=16, out_type='featmap'
    )
    neck = _vitdet(c=32, out=8)
    outs = neck(backbone(torch.randn(1, 3, 64, 128)))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (8, 16, 32),
        (8, 8, 16),
        (8, 4, 8),
        (8, 2, 4),
        (8, 1, 2),
    ]
    assert [(64 // o.shape[2], 128 // o.shape[3]) for o in outs] == [
        (4, 4),
        (8, 8),
        (16, 16),
        (32, 32),
        (64, 64),
    ]


def test_vitdet_config_builds_unchanged_from_mmdets_registry():
    pytest.importorskip('mmdet')
    from mmdet.registry import MODELS as MMDET_MODELS

    with DefaultScope.overwrite_default_scope('mmdet'):
        neck = MMDET_MODELS.build(dict(type='mmdeit.SimpleFPN', **VITDET_NECK))
    assert type(neck) is SimpleFPN and neck.vitdet_layout
    norm = neck.lateral_convs[0].norm_layer
    assert norm.eps == 1e-5 and all(p.requires_grad for p in norm.parameters())
    assert set(_mmdet_keys(768, 256, [192, 384, 768, 768])) == set(neck.state_dict())
    outs = neck(torch.randn(1, 768, 4, 6))
    assert [tuple(o.shape[1:]) for o in outs] == [
        (256, 16, 24),
        (256, 8, 12),
        (256, 4, 6),
        (256, 2, 3),
        (256, 1, 2),
    ]


def test_other_norms_keep_mmcv_names_and_no_norm_works():
    neck = _vitdet(norm_cfg=dict(type='GN', num_groups=4), act_cfg=dict(type='ReLU'))
    assert 'lateral_convs.0.gn.weight' in neck.state_dict()  # as mmdet's with GN
    assert isinstance(neck.fpn1[1], torch.nn.GroupNorm)
    plain = _vitdet(norm_cfg=None)
    assert plain.fpn_convs[0].conv.bias is not None
    assert len(plain(torch.randn(1, 32, 4, 4))) == 5


@pytest.mark.parametrize(
    'kwargs, error, match',
    [
        (dict(in_channels=[8, 16, 32]), ValueError, 'in_channels must have 4 entries'),
        (dict(in_channels=[8, 16, 32, 32, 32]), ValueError, 'in_channels must have 4 entries'),
        (dict(in_channels=[8, 16, 32, 16]), ValueError, r'does not match backbone_channel=32'),
        (dict(backbone_channel=64), ValueError, r'\[16, 32, 64, 64\]'),
        (dict(in_channels=32), TypeError, r'in_channels must be the list \[C/4'),
        (dict(in_channels=[8.0, 16, 32, 32]), TypeError, 'in_channels entries must be ints'),
        (dict(backbone_channel=30), ValueError, 'backbone_channel must be divisible by 4'),
        (dict(backbone_channel='768'), TypeError, 'backbone_channel must be a positive int'),
        (dict(backbone_channel=0), TypeError, 'backbone_channel'),
        (dict(scale_factors=(4.0, 2.0, 1.0, 0.5)), ValueError, 'scale_factors=.* cannot be'),
        (dict(num_outs=3), ValueError, 'num_outs'),
        (dict(conv_cfg='Conv2d'), TypeError, 'conv_cfg'),
    ],
)
def test_bad_vitdet_arguments_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        _vitdet(**kwargs)


def test_in_channels_list_without_backbone_channel_is_an_error():
    with pytest.raises(ValueError, match='needs backbone_channel'):
        SimpleFPN(in_channels=[192, 384, 768, 768])
