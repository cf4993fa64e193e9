"""DeiTSimMIM: the loss against an independent implementation, checks, and the Runner path
(SimMIM pretraining, then a student fine-tuned from it), as a user runs them."""

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmpretrain.structures import DataSample

from mmdeit.registry import MODELS
from tests.journeys.conftest import CONFIGS, run_cli, tool, user_config

SIMMIM = 'simmim/simmim_deit-digits-tiny_1xb64_digits.py'
FINETUNES = [
    'simmim/benchmarks/deit-digits-tiny_simmim-pre_1xb64_digits.py',
    'simmim/benchmarks/deit-digits-tiny-distilled-hard_simmim-pre_1xb64_digits.py',
]


def build(cfg: dict) -> torch.nn.Module:
    with DefaultScope.overwrite_default_scope('mmdeit'):
        return MODELS.build(copy.deepcopy(cfg))


@pytest.fixture(scope='module')
def model_cfg() -> dict:
    return Config.fromfile(str(CONFIGS / SIMMIM)).model.to_dict()


def hf_loss(rec, target, mask, patch, channels=3):
    """HF's DeiTForMaskedImageModeling loss, written out: the L1 error on the masked pixels."""
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)
    error = F.l1_loss(target, rec, reduction='none')  # (B, 3, H, W)
    return (error * pixels).sum() / (pixels.sum() + 1e-5) / channels


def test_loss_matches_an_independent_implementation(model_cfg):
    torch.manual_seed(0)
    model = build(model_cfg).train()
    x = torch.randn(4, 3, 16, 16)
    mask = (torch.rand(4, 4, 4) < 0.6).long()
    samples = [DataSample().set_mask(m) for m in mask]
    torch.manual_seed(1)  # the same stochastic depth draws for both
    loss = model.loss(x, samples)['loss']
    torch.manual_seed(1)
    # Independently: the encoder's patch tokens (extra tokens dropped), the decoder by hand
    # (1x1 conv = a linear map of each token, pixel shuffle), HF's loss formula.
    model.backbone.out_type = 'raw'
    tokens = model.backbone(x, mask.bool())[0][:, 2:]  # (B, 16, C)
    model.backbone.out_type = 'featmap'
    conv = model.neck.decoder[0]
    pixels = tokens @ conv.weight.flatten(1).T + conv.bias  # (B, 16, 3*4*4)
    rec = F.pixel_shuffle(pixels.transpose(1, 2).reshape(4, 48, 4, 4), 4)  # (B, 3, 16, 16)
    torch.testing.assert_close(loss, hf_loss(rec, x, mask, 4), rtol=1e-5, atol=0)
    loss.backward()
    assert model.backbone.mask_token.grad.abs().sum() > 0


def test_reconstruct_decodes_each_patch_from_its_own_token(model_cfg):
    model = build(model_cfg).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        rec = model.reconstruct(x, torch.zeros(2, 16, dtype=torch.bool))  # (B, 3, 16, 16)
        assert torch.equal(rec, model.reconstruct(x))
        feat = model.extract_feat(x)[0]  # (B, C, 4, 4), no mask
    torch.testing.assert_close(rec, model.neck(feat), rtol=0, atol=0)


@pytest.mark.parametrize(
    'change, message',
    [
        (dict(backbone=dict(type='DistilledVisionTransformer')), 'has no mask token'),
        (dict(backbone=dict(out_type='cls_token')), "out_type must be 'featmap'"),
        (dict(neck=dict(encoder_stride=8)), r'neck.encoder_stride must be the patch size'),
        (dict(head=dict(patch_size=8)), r'head.patch_size must be the patch size'),
    ],
)
def test_bad_models_are_refused_naming_the_field(model_cfg, change, message):
    cfg = copy.deepcopy(model_cfg)
    for part, fields in change.items():
        cfg[part].update(fields)
    with pytest.raises(ValueError, match=message):
        build(cfg)


def test_batches_without_masks_are_refused(model_cfg):
    model = build(model_cfg)
    with pytest.raises(ValueError, match='data_samples have no mask: put SimMIMMaskGenerator'):
        model.loss(torch.randn(2, 3, 16, 16), [DataSample(), DataSample()])


def test_finetune_configs_load_every_backbone_key(model_cfg, tmp_path):
    """The pretrain -> fine-tune handoff in process: each student config's Pretrained init
    fills every backbone weight from a SimMIM checkpoint; only the pretraining parts are left."""
    pretrained = build(model_cfg)
    pretrained.init_weights()
    path = tmp_path / 'simmim.pth'
    torch.save({'state_dict': pretrained.state_dict()}, path)
    source = pretrained.state_dict()
    for config in FINETUNES:
        cfg = Config.fromfile(str(CONFIGS / config))
        init = cfg.model.init_cfg[-1]
        assert init.type == 'Pretrained' and 'simmim_deit-digits-tiny' in init.checkpoint
        init.checkpoint = str(path)
        cfg.model.pop('teacher', None)  # the student's side only
        cfg.model.pop('teacher_ckpt', None)
        cfg.model.head.loss.mode = 'none'
        student = build(cfg.model.to_dict())
        student.init_weights()
        backbone = student.backbone.state_dict()
        assert {f'backbone.{k}' for k in backbone} | {'backbone.mask_token'} == {
            k for k in source if k.startswith('backbone.')
        }
        for key, value in backbone.items():
            assert torch.equal(value, source[f'backbone.{key}']), key
        weights = {k[len('backbone.') :]: v for k, v in source.items() if k.startswith('backbone.')}
        del weights['mask_token']
        student.backbone.load_state_dict(weights, strict=True)


@pytest.mark.journey
def test_pretrain_then_finetune_through_the_cli(tmp_path):
    """tools/train.py from a folder outside the checkout: 2 SimMIM iterations on the digits,
    then 1 iteration of the student without distillation starting from that checkpoint."""
    short = (
        'train_cfg = dict(max_epochs=1)\n'
        'default_hooks = dict(logger=dict(interval=1))\n'
        'randomness = dict(seed=0)\n'
    )
    body = short + 'train_dataloader = dict(dataset=dict(indices=128))\n'
    pre_cfg = user_config(tmp_path, SIMMIM, body)
    out = run_cli([tool('train.py'), pre_cfg.name, '--work-dir', 'pre'], tmp_path, 'pre').stdout
    losses = [float(v) for v in re.findall(r'Epoch\(train\) \[1\]\[\d/2\].*loss: ([\d.]+)', out)]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses), out[-3000:]
    checkpoint = tmp_path / 'pre' / 'epoch_1.pth'
    state_dict = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert 'backbone.mask_token' in state_dict and 'neck.decoder.0.weight' in state_dict

    inits = Config.fromfile(str(CONFIGS / FINETUNES[0])).model.init_cfg
    inits[-1]['checkpoint'] = str(checkpoint)
    body = short + (
        'train_dataloader = dict(dataset=dict(indices=64))\n'
        'val_dataloader = dict(dataset=dict(indices=120))\n'
        f'model = dict(init_cfg={[dict(i) for i in inits]!r})\n'
    )
    ft_cfg = user_config(tmp_path, FINETUNES[0], body)
    out = run_cli([tool('train.py'), ft_cfg.name, '--work-dir', 'ft'], tmp_path, 'ft').stdout
    assert f'load model from: {checkpoint}' in out and 'size mismatch' not in out, out[-3000:]
    unexpected = re.search(r'unexpected key in source state_dict: (.*)', out).group(1)
    assert sorted(unexpected.split(', ')) == [
        'backbone.mask_token',
        'neck.decoder.0.bias',
        'neck.decoder.0.weight',
    ]
    missing = re.search(r'missing keys in source state_dict: (.*)', out).group(1)
    assert all(k.startswith('head.') for k in missing.split(', ')), missing
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    assert Path(tmp_path / 'ft' / 'epoch_1.pth').is_file()


def test_vis_simmim_tool_writes_the_picture(model_cfg, tmp_path):
    import importlib.util

    from PIL import Image

    model = build(model_cfg)
    checkpoint = tmp_path / 'simmim.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    path = CONFIGS.parent / 'tools' / 'visualization' / 'vis_simmim.py'
    spec = importlib.util.spec_from_file_location('vis_simmim', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / 'vis' / 'simmim.png'
    args = [str(CONFIGS / SIMMIM), str(checkpoint), '--out', str(out), '--num', '2']
    assert tool.main([*args, '--panel-size', '32']) == 0
    with Image.open(out) as picture:  # 2 rows of input, masked, reconstruction, pasted
        assert picture.size == (4 * 32, 2 * (32 + 20))
    with pytest.raises(ValueError, match='no SimMIMMaskGenerator'):
        tool.picture_pipeline([dict(type='Resize', scale=16), dict(type='PackInputs')])
    # CONFIG and CHECKPOINT swapped: an exit with the message naming the argument
    with pytest.raises(SystemExit, match=r'vis_simmim: config .*simmim.pth .*swapped\?\)'):
        tool.main([str(checkpoint), str(CONFIGS / SIMMIM), '--out', str(out)])
