"""UPerNet of configs/downstream/mmseg built and run by mmsegmentation itself."""

import pytest

pytest.importorskip('mmseg')

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import mmdeit.models.necks  # noqa: E402,F401
from mmdeit.models.backbones import DistilledVisionTransformer  # noqa: E402
from mmdeit.models.necks import SimpleFPN  # noqa: E402

from ..conftest import TINY_ARCH  # noqa: E402
from .conftest import CONFIG_DIR, assert_backbone_matches_classifier  # noqa: E402

CONFIG = CONFIG_DIR / 'mmseg' / 'deit-s16-distilled_mln_upernet_8xb2-160k_ade20k-512x512.py'
IMG = 64
NUM_CLASSES = 4


@pytest.fixture(autouse=True)
def mmseg_scope():
    """mmseg's registries in its own default scope, restored afterwards for other tests."""
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmseg'):
        yield


def _tiny_cfg(init_cfg=None) -> Config:
    """The config file shrunk to a 4-layer, 32-channel DeiT on 64x64 inputs."""
    cfg = Config.fromfile(str(CONFIG))
    assert cfg.default_scope == 'mmseg'
    model = cfg.model
    assert model.backbone.type == 'mmdeit.DistilledVisionTransformer'
    assert model.backbone.out_type == 'featmap' and model.backbone.out_indices == (2, 5, 8, 11)
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, out_indices=(0, 1, 2, 3), init_cfg=init_cfg)
    model.data_preprocessor.size = (IMG, IMG)
    model.neck.update(in_channels=[32] * 4, out_channels=32)
    model.decode_head.update(in_channels=[32] * 4, channels=16, num_classes=NUM_CLASSES)
    model.auxiliary_head.update(in_channels=32, channels=8, num_classes=NUM_CLASSES)
    return cfg


def _batch(batch_size=2, h=IMG, w=IMG) -> dict:
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, h, w)))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_deit_backbone_and_simple_fpn_build_from_mmseg_registry():
    backbone = MODELS.build(
        dict(
            type='mmdeit.DistilledVisionTransformer',
            arch=TINY_ARCH,
            img_size=IMG,
            out_type='featmap',
        )
    )
    assert type(backbone) is DistilledVisionTransformer  # mmdeit's, not mmpretrain's
    neck = MODELS.build(dict(type='mmdeit.SimpleFPN', in_channels=32, out_channels=8))
    assert type(neck) is SimpleFPN
    assert [o.shape[-1] for o in neck(backbone(torch.randn(1, 3, IMG, IMG)))] == [16, 8, 4, 2, 1]


def test_upernet_from_config_trains_one_step_and_predicts():
    cfg = _tiny_cfg()
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert type(model.backbone) is DistilledVisionTransformer
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    model.train()
    data = model.data_preprocessor(_batch(), training=True)
    assert data['inputs'].shape == (2, 3, IMG, IMG)
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'aux.loss_ce'} <= losses.keys()
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and all(
        torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()
    )
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    optim_wrapper.backward(loss)
    # The featmaps hold no extra tokens, but both took part in attention: they get gradients.
    for name in ('dist_token', 'cls_token', 'pos_embed', 'patch_embed.projection.weight'):
        grad = model.backbone.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    optim_wrapper.step()
    assert not torch.equal(before['dist_token'], model.backbone.dist_token)

    model.eval()
    with torch.no_grad():
        results = model.test_step(_batch())
    assert len(results) == 2
    for result in results:
        assert isinstance(result, SegDataSample)
        assert result.pred_sem_seg.data.shape == (1, IMG, IMG)
        assert result.seg_logits.data.shape == (NUM_CLASSES, IMG, IMG)
        assert int(result.pred_sem_seg.data.max()) < NUM_CLASSES
    # mmseg's test pipeline keeps the aspect ratio: another grid, pos_embed resized on the fly
    with torch.no_grad():
        (result,) = model.test_step(_batch(1, h=IMG, w=IMG + 32))
    assert result.pred_sem_seg.data.shape == (1, IMG, IMG + 32)


def test_loads_an_mmdeit_classifier_checkpoint_with_resized_pos_embed(classifier_checkpoint):
    path, classifier = classifier_checkpoint
    cfg = _tiny_cfg(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    model = MODELS.build(cfg.model)
    first_qkv = 'layers.0.attn.qkv.weight'
    assert not torch.equal(
        model.backbone.state_dict()[first_qkv], classifier.backbone.state_dict()[first_qkv]
    )
    model.init_weights()
    assert model.backbone.pos_embed.shape == (1, 2 + (IMG // 16) ** 2, 32)
    assert_backbone_matches_classifier(model.backbone, classifier)
