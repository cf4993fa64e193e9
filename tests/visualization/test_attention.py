"""Attention rollout, token maps, overlays, the PNG grid and the vis_attention tool."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

from mmdeit.converters import convert_checkpoint
from mmdeit.registry import MODELS
from mmdeit.visualization import (
    attention_panels,
    attention_rollout,
    fuse_heads,
    normalize_map,
    overlay_heatmap,
    save_panel_grid,
    token_attention_map,
)

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'visualization' / 'vis_attention.py'
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def _two_layer_example() -> list:
    """Two layers, two heads, two tokens; the head means are A1 and A2 below."""
    layer1 = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]
    )  # mean [[1,0],[.5,.5]]
    layer2 = torch.tensor([[[0.2, 0.8], [0.0, 1.0]]] * 2)  # mean [[.2,.8],[0,1]]
    return [layer1[None], layer2[None]]  # 2 x (B=1, heads=2, N=2, N=2)


def test_rollout_matches_hand_computation():
    # mean: Â1 = .5 A1 + .5 I = [[1, 0], [.25, .75]], Â2 = [[.6, .4], [0, 1]];
    # R = Â2 @ Â1 = [[.6 + .4 * .25, .4 * .75], [.25, .75]].
    rollout = attention_rollout(_two_layer_example())
    want = torch.tensor([[[0.7, 0.3], [0.25, 0.75]]])
    torch.testing.assert_close(rollout, want, rtol=0, atol=1e-6)
    # max: max(A1 heads) = [[1, 0], [1, 1]] -> .5 (.) + .5 I = [[1, 0], [.5, 1]], rows
    # renormalised to [[1, 0], [1/3, 2/3]]; times Â2 = [[.6, .4], [0, 1]].
    rollout = attention_rollout(_two_layer_example(), head_fusion='max')
    want = torch.tensor([[[0.6 + 0.4 / 3, 0.4 * 2 / 3], [1 / 3, 2 / 3]]])
    torch.testing.assert_close(rollout, want, rtol=0, atol=1e-6)


def test_rollout_properties_on_random_attention():
    attentions = [torch.randn(2, 3, 6, 6).softmax(-1) for _ in range(4)]
    rollout = attention_rollout(attentions)
    assert rollout.shape == (2, 6, 6)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 6), rtol=0, atol=1e-5)
    identity = attention_rollout(attentions, residual_weight=1.0)
    torch.testing.assert_close(identity, torch.eye(6).expand(2, 6, 6), rtol=0, atol=1e-6)
    single = attention_rollout(attentions[:1], residual_weight=0.0)
    torch.testing.assert_close(single, attentions[0].mean(1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='head_fusion'):
        attention_rollout(attentions, head_fusion='median')
    with pytest.raises(ValueError, match='residual_weight'):
        attention_rollout(attentions, residual_weight=2.0)
    with pytest.raises(ValueError, match='at least one'):
        attention_rollout([])
    with pytest.raises(ValueError, match=r'\(B, heads, N, N\)'):
        fuse_heads(torch.rand(6, 6))


def test_token_attention_map_reads_the_token_row():
    attention = torch.arange(2 * 6 * 6, dtype=torch.float).reshape(1, 2, 6, 6)  # 2 + 2x2
    maps = token_attention_map(
        attention, token_index=1, num_extra_tokens=2, patch_resolution=(2, 2)
    )
    assert maps.shape == (1, 2, 2, 2)
    torch.testing.assert_close(maps[0, 1].flatten(), attention[0, 1, 1, 2:])
    with pytest.raises(ValueError, match='num_extra_tokens'):
        token_attention_map(attention, 0, 1, (2, 2))
    with pytest.raises(ValueError, match='token_index'):
        token_attention_map(attention, 7, 2, (2, 2))


def test_overlay_blends_image_and_colormap():
    image = np.full((8, 10, 3), 100, np.uint8)
    heat = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(overlay_heatmap(image, heat, alpha=0.0), image)
    full = overlay_heatmap(image, heat, alpha=1.0)
    assert full.shape == (8, 10, 3) and full.dtype == np.uint8
    assert not np.array_equal(full[0, 0], full[-1, -1])  # low and high ends differ in colour
    assert normalize_map(np.ones((2, 2))).max() == 0
    with pytest.raises(ValueError, match='alpha'):
        overlay_heatmap(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match=r'\(H, W, 3\)'):
        overlay_heatmap(image[..., 0], heat)


def test_panel_grid_png_has_the_computed_size(tmp_path):
    attentions = [torch.randn(1, 3, 2 + 16, 2 + 16).softmax(-1) for _ in range(2)]
    image = np.random.randint(0, 256, (40, 48, 3), dtype=np.uint8)
    rows = attention_panels(image, attentions, (4, 4), {'cls': 0, 'dist': 1}, 2)
    assert len(rows) == 2 and all(len(row) == 2 + 3 for row in rows)  # input, rollout, 3 heads
    out = tmp_path / 'grid.png'
    size = save_panel_grid(rows, str(out), title_height=20)
    assert size == (5 * 48, 2 * (40 + 20))
    with Image.open(out) as png:
        assert png.size == size
    with pytest.raises(ValueError, match='layer 2 is out of range'):
        attention_panels(image, attentions, (4, 4), {'cls': 0}, 2, layer=2)
    with pytest.raises(ValueError, match='panel'):
        save_panel_grid([[('a', image), ('b', image[:20])]], str(tmp_path / 'bad.png'))


def test_backbone_attentions_match_hf_output_attentions():
    config = DeiTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=5,
        layer_norm_eps=1e-6,
        attn_implementation='eager',
    )
    hf = DeiTForImageClassificationWithTeacher(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    state_dict = convert_checkpoint(hf.state_dict())['state_dict']
    backbone = MODELS.build(
        dict(type='mmdeit.DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8)
    ).eval()
    backbone.load_state_dict(
        {k[len('backbone.') :]: v for k, v in state_dict.items() if k.startswith('backbone.')},
        strict=True,
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = hf(x, output_attentions=True, output_hidden_states=True)
        ours = backbone.forward_with_details(x)
    assert len(ours['attentions']) == len(theirs.attentions) == 2
    for got, want in zip(ours['attentions'], theirs.attentions):
        assert got.shape == (2, 2, 18, 18)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for got, want in zip(ours['hidden_states'], theirs.hidden_states):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _write_config(path: Path) -> None:
    path.write_text(f"""
default_scope = 'mmdeit'
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3,
                           to_rgb=True),
    backbone=dict(type='DistilledVisionTransformer', arch={TINY!r}, img_size=32, patch_size=8),
    neck=None,
    head=dict(type='DeiTClsHead', num_classes=4, in_channels=32))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(32, 32)),
    dict(type='PackInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
""")


def test_vis_attention_tool_writes_side_by_side_png(tmp_path):
    config = tmp_path / 'tiny_deit.py'
    _write_config(config)
    from mmengine.config import Config

    model = MODELS.build(Config.fromfile(str(config)).model)
    checkpoint = tmp_path / 'tiny.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    image = tmp_path / 'digit.png'
    Image.fromarray(np.random.randint(0, 256, (40, 36, 3), dtype=np.uint8)).save(image)

    spec = importlib.util.spec_from_file_location('vis_attention', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'vis'
    assert (
        tool.main(
            [str(image), str(config), str(checkpoint), '--out', str(out), '--panel-size', '64']
        )
        == 0
    )
    png = out / 'digit_attention.png'
    with Image.open(png) as picture:
        # Rows cls and dist; columns input, rollout and the 2 heads of the last layer.
        assert picture.size == (4 * 64, 2 * (64 + 20))
