import copy

import pytest
import torch
from mmpretrain.models.backbones import DistilledVisionTransformer as MMPretrainDeiT
from mmpretrain.models.utils import resize_pos_embed as mmpretrain_resize_pos_embed
from mmpretrain.registry import MODELS as MMPRETRAIN_MODELS

from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.backbones.fast_transformer_layer import FastTransformerEncoderLayer
from mmdeit.models.utils import resize_pos_embed
from mmdeit.registry import MODELS

TINY = dict(embed_dims=48, num_layers=4, num_heads=3, feedforward_channels=96)
OUT_TYPES = ('cls_token', 'featmap', 'avg_featmap', 'raw')
FAST_PATH = pytest.mark.parametrize('fast_path', [False, True])


def _pair(model_cfg, fast_path=True):
    """An mmdeit backbone and an mmpretrain one holding the same weights (strict load)."""
    ours = DistilledVisionTransformer(**model_cfg, fast_path=fast_path)
    ours.init_weights()
    indices = model_cfg.get('out_indices', -1)
    indices = [indices] if isinstance(indices, int) else list(indices)  # mmpretrain edits it
    theirs = MMPretrainDeiT(**{**model_cfg, 'out_indices': indices})
    theirs.load_state_dict(ours.state_dict(), strict=True)
    theirs.eval()  # mmpretrain's train()/eval() return None
    return ours.eval(), theirs


def _flatten(outs):
    flat = []
    for out in outs:
        flat.extend(out if isinstance(out, (tuple, list)) else [out])
    return flat


PARITY_CASES = [
    # tiny dict arch: every out_type x out_indices x input size
    *[
        (TINY, t, i, hw)
        for t in OUT_TYPES
        for i in (-1, (0, 2, -1))
        for hw in ((224, 224), (256, 309))
    ],
    # the real deit-tiny: every out_type, several indices, non-square input
    *[('deit-tiny', t, (2, 5, -1), (256, 309)) for t in OUT_TYPES],
    ('deit-tiny', 'cls_token', -1, (224, 224)),
]


@FAST_PATH
@pytest.mark.parametrize('arch, out_type, out_indices, input_hw', PARITY_CASES)
def test_parity_with_mmpretrain(arch, out_type, out_indices, input_hw, fast_path):
    cfg = dict(arch=arch, img_size=224, out_type=out_type, out_indices=out_indices)
    ours, theirs = _pair(cfg, fast_path)
    x = torch.randn(2, 3, *input_hw)
    with torch.no_grad():
        got, want = _flatten(ours(x)), _flatten(theirs(x))
    n_out = 1 if isinstance(out_indices, int) else len(out_indices)
    assert len(ours(x)) == n_out
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('arch', ['deit-small', 'deit-base', 'small', 'base', 'large'])
def test_real_arch_state_dict_matches_mmpretrain(arch):
    with torch.device('meta'):  # shapes only, no memory or init time
        ours = DistilledVisionTransformer(arch=arch, img_size=224, patch_size=16)
        theirs = MMPretrainDeiT(arch=arch, img_size=224, patch_size=16)
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in theirs.state_dict().items()}


@pytest.mark.parametrize(
    'out_type, shape',
    [('featmap', (2, 48, 4, 6)), ('avg_featmap', (2, 48)), ('raw', (2, 4 * 6 + 2, 48))],
)
def test_output_shapes(out_type, shape):
    model = DistilledVisionTransformer(
        arch=TINY, img_size=32, patch_size=8, out_indices=(1, 3), out_type=out_type
    )
    outs = model(torch.randn(2, 3, 32, 48))
    assert len(outs) == 2 and all(o.shape == shape for o in outs)


def test_cls_token_output_is_a_pair_per_index():
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8, out_indices=(1, 3))
    model.init_weights()
    outs = model(torch.randn(2, 3, 32, 48))
    assert len(outs) == 2
    for cls, dist in outs:
        assert cls.shape == dist.shape == (2, 48)
        assert not torch.equal(cls, dist)


@FAST_PATH
@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_gradients_reach_every_parameter(out_type, fast_path):
    model = DistilledVisionTransformer(
        arch=TINY,
        img_size=32,
        patch_size=8,
        out_type=out_type,
        drop_path_rate=0.1,
        drop_rate=0.1,
        fast_path=fast_path,
    )
    model.init_weights()
    model.train()
    outs = _flatten(model(torch.randn(2, 3, 32, 32)))
    sum(o.float().pow(2).mean() for o in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@FAST_PATH
@pytest.mark.parametrize('train', [False, True])
def test_last_layer_computes_only_the_read_tokens(train, fast_path):
    """With out_type='cls_token' the last layer's FFN sees the cls and dist tokens only (on
    both paths: what the ONNX export traces is the reference's), and they are those of the
    model computing all 18 tokens."""
    cfg = dict(arch=TINY, img_size=32, patch_size=8, drop_path_rate=0.3, fast_path=fast_path)
    model = DistilledVisionTransformer(**cfg)
    model.init_weights()
    raw = DistilledVisionTransformer(**cfg, out_type='raw')
    raw.load_state_dict(model.state_dict())
    seen = []
    model.layers[-1].ffn.layers[0][0].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].shape[1])
    )
    x = torch.randn(3, 3, 32, 32)
    torch.manual_seed(0)
    cls, dist = model.train(train)(x)[0]
    torch.manual_seed(0)
    tokens = raw.train(train)(x)[0]  # (B, 2+16, C), every token computed
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(dist, tokens[:, 1])
    assert seen == [2]


def test_pre_norm_is_applied():
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8, pre_norm=True)
    model.init_weights()
    assert 'pre_norm.weight' in model.state_dict()
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.eval()(torch.randn(2, 3, 32, 32) * 5 + 3)
    tokens = seen['x']  # layer input: pre-normed tokens (LN weight 1, bias 0 at init)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(tokens.shape[:2]), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        tokens.std(-1, unbiased=False), torch.ones(tokens.shape[:2]), atol=1e-3, rtol=0
    )


def test_frozen_stages_freeze_dist_token_and_survive_train():
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8, frozen_stages=2)
    assert model.train() is model
    assert model.eval() is model
    model.train()
    for name in ('cls_token', 'dist_token', 'pos_embed'):
        assert not getattr(model, name).requires_grad, name
    for module in (model.patch_embed, model.layers[0], model.layers[1]):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    for module in (model.layers[2], model.layers[3], model.ln1):
        assert module.training
        assert all(p.requires_grad for p in module.parameters())


def test_frozen_all_stages_freezes_final_norm():
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8, frozen_stages=4)
    model.train()
    assert not model.ln1.training
    assert not any(p.requires_grad for p in model.parameters())


def test_get_layer_depth():
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8)
    for name in ('cls_token', 'dist_token', 'pos_embed', 'patch_embed.projection.weight'):
        assert model.get_layer_depth(name) == (0, 6)
    assert model.get_layer_depth('layers.2.attn.qkv.weight') == (3, 6)
    assert model.get_layer_depth('ln1.weight') == (5, 6)
    assert model.get_layer_depth('backbone.dist_token', prefix='backbone.') == (0, 6)
    assert model.get_layer_depth('head.layers.head.weight', prefix='backbone.') == (5, 6)


@FAST_PATH
def test_with_cp_keeps_outputs_and_gradients(fast_path):
    cfg = dict(arch=TINY, img_size=32, patch_size=8, out_type='raw', fast_path=fast_path)
    plain = DistilledVisionTransformer(**cfg)
    plain.init_weights()
    cp = DistilledVisionTransformer(**cfg, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = [m.train()(x)[0] for m in (plain, cp)]
    torch.testing.assert_close(outs[0], outs[1])
    for out in outs:
        out.square().mean().backward()
    for (name, p1), p2 in zip(plain.named_parameters(), cp.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=name)


def test_resize_pos_embed_matches_mmpretrain():
    pos = torch.randn(1, 2 + 14 * 14, 16)
    for dst in [(14, 14), (16, 20), (24, 24)]:
        torch.testing.assert_close(
            resize_pos_embed(pos, (14, 14), dst, 'bicubic', 2),
            mmpretrain_resize_pos_embed(pos, (14, 14), dst, 'bicubic', 2),
        )
    assert resize_pos_embed(pos, (14, 14), (14, 14), num_extra_tokens=2) is pos
    out = resize_pos_embed(pos, (14, 14), (7, 9), num_extra_tokens=2)
    assert out.shape == (1, 2 + 63, 16)
    torch.testing.assert_close(out[:, :2], pos[:, :2])  # cls and dist kept as they are
    with pytest.raises(ValueError, match='num_extra_tokens'):
        resize_pos_embed(pos, (14, 14), (7, 7), num_extra_tokens=1)


def test_checkpoint_at_other_size_loads_with_resized_pos_embed():
    small = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8)
    small.init_weights()
    big = DistilledVisionTransformer(arch=TINY, img_size=48, patch_size=8)
    state = copy.deepcopy(small.state_dict())
    big.load_state_dict(state, strict=True)
    want = resize_pos_embed(small.pos_embed.detach(), (4, 4), (6, 6), 'bicubic', 2)
    torch.testing.assert_close(big.pos_embed.detach(), want)
    torch.testing.assert_close(big.dist_token, small.dist_token)


def test_strict_state_dict_round_trip(tmp_path):
    model = DistilledVisionTransformer(
        arch=TINY, img_size=32, patch_size=8, layer_scale_init_value=0.1, pre_norm=True
    )
    model.init_weights()
    torch.save(model.state_dict(), tmp_path / 'b.pth')
    again = DistilledVisionTransformer(
        arch=TINY, img_size=32, patch_size=8, layer_scale_init_value=0.1, pre_norm=True
    )
    again.load_state_dict(torch.load(tmp_path / 'b.pth', weights_only=True), strict=True)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.eval()(x)[0][0], again.eval()(x)[0][0])


@FAST_PATH
def test_forward_with_details(fast_path):
    model = DistilledVisionTransformer(
        arch=TINY, img_size=32, patch_size=8, out_indices=(1, 3), fast_path=fast_path
    )
    model.init_weights()
    model.eval()
    x = torch.randn(2, 3, 32, 40)
    details = model.forward_with_details(x)
    assert details['patch_resolution'] == (4, 5)
    assert len(details['hidden_states']) == 5 and len(details['attentions']) == 4
    assert details['attentions'][0].shape == (2, 3, 22, 22)
    torch.testing.assert_close(details['attentions'][-1].sum(-1), torch.ones(2, 3, 22))
    for got, want in zip(_flatten(details['outs']), _flatten(model(x))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _run(model, x, seed):
    torch.manual_seed(seed)
    outs = _flatten(model(x))
    sum(o.square().mean() for o in outs).backward()
    return outs, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize('out_type', OUT_TYPES)
@pytest.mark.parametrize('seed', [0, 1])
def test_fast_path_equals_reference(out_type, seed):
    """Outputs and gradients in training (drop path: the same draws given the same seed) and
    outputs in eval; the same parameters, so the switch is a free choice."""
    cfg = dict(arch=TINY, img_size=32, patch_size=8, out_type=out_type, out_indices=(1, 3))
    cfg.update(drop_path_rate=0.5)
    fast = DistilledVisionTransformer(**cfg)
    fast.init_weights()
    ref = DistilledVisionTransformer(**cfg, fast_path=False)
    ref.load_state_dict(fast.state_dict(), strict=True)
    assert fast.fast_path and not ref.fast_path
    assert all(type(m) is FastTransformerEncoderLayer for m in fast.layers)
    assert not any(isinstance(m, FastTransformerEncoderLayer) for m in ref.layers)
    x = torch.randn(8, 3, 32, 40)
    got, want = _run(fast.train(), x, seed), _run(ref.train(), x, seed)
    for g, w in zip(got[0], want[0], strict=True):
        torch.testing.assert_close(g, w)
    for name, grad in got[1].items():
        torch.testing.assert_close(grad, want[1][name], msg=name)
    with torch.no_grad():
        for g, w in zip(_flatten(fast.eval()(x)), _flatten(ref.eval()(x)), strict=True):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_fast_path_is_a_config_switch():
    model = MODELS.build(
        dict(type='DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8)
    )
    assert model.fast_path
    model = MODELS.build(
        dict(
            type='DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8, fast_path=False
        )
    )
    assert not model.fast_path
    assert not any(isinstance(m, FastTransformerEncoderLayer) for m in model.layers)


def test_registry_builds_in_scope_and_keeps_mmpretrain_separate():
    model = MODELS.build(
        dict(type='DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8)
    )
    assert isinstance(model, DistilledVisionTransformer)
    model = MMPRETRAIN_MODELS.build(
        dict(type='mmdeit.DistilledVisionTransformer', arch=TINY, img_size=32, patch_size=8)
    )
    assert isinstance(model, DistilledVisionTransformer)
    # mmpretrain's own class stays what mmpretrain's registry gives (no default scope switch)
    assert MMPRETRAIN_MODELS.get('DistilledVisionTransformer') is MMPretrainDeiT
    assert MODELS.get('DistilledVisionTransformer') is DistilledVisionTransformer


def test_builds_from_mmseg_scope():
    mmseg_registry = pytest.importorskip('mmseg.registry')
    model = mmseg_registry.MODELS.build(
        dict(
            type='mmdeit.DistilledVisionTransformer',
            arch=TINY,
            img_size=32,
            patch_size=8,
            out_type='featmap',
        )
    )
    assert isinstance(model, DistilledVisionTransformer)
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 48, 4, 4)


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(arch='deit-huge'), 'arch'),
        (dict(arch=dict(embed_dims=8, num_layers=2, num_heads=2)), 'feedforward_channels'),
        (dict(arch=TINY, img_size=30, patch_size=8), 'img_size'),
        (dict(arch=TINY, out_type='tokens'), 'out_type'),
        (dict(arch=TINY, out_indices=4), 'out_indices'),
        (dict(arch=TINY, out_indices=(-5,)), 'out_indices'),
        (dict(arch=TINY, frozen_stages=5), 'frozen_stages'),
        (dict(arch=TINY, frozen_stages=-2), 'frozen_stages'),
        (dict(arch=dict(TINY, num_heads=5)), 'num_heads'),
        (dict(arch=TINY, layer_cfgs=[dict()] * 3), 'layer_cfgs'),
    ],
)
def test_bad_config_errors(kwargs, match):
    kwargs.setdefault('img_size', 32)
    kwargs.setdefault('patch_size', 8)
    with pytest.raises(ValueError, match=match):
        DistilledVisionTransformer(**kwargs)


@pytest.mark.parametrize('fast_path', [True, False])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_forward_on_the_meta_device_gives_the_shapes(fast_path, training):
    """A forward on 'meta' tensors (shape inference, no memory): the layers ask autocast only
    about device types it knows (asking about 'meta' raises)."""
    with torch.device('meta'):
        model = DistilledVisionTransformer(
            arch='deit-small', img_size=224, patch_size=16, drop_path_rate=0.1, fast_path=fast_path
        )
        x = torch.empty(2, 3, 224, 224)
    model.train(training)
    with torch.set_grad_enabled(training):
        cls_token, dist_token = model(x)[-1]
    assert cls_token.shape == dist_token.shape == (2, 384)
    assert cls_token.device.type == 'meta'
