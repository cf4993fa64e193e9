"""Mask R-CNN of configs/downstream/mmdet built and run by mmdetection itself."""

import pytest

pytest.importorskip('mmdet')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmdet.structures.mask import BitmapMasks  # noqa: E402
from mmdet.utils import register_all_modules  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

import mmdeit.models.necks  # noqa: E402,F401
from mmdeit.models.backbones import DistilledVisionTransformer  # noqa: E402
from mmdeit.models.necks import SimpleFPN  # noqa: E402

from ..conftest import TINY_ARCH  # noqa: E402
from .conftest import CONFIG_DIR, assert_backbone_matches_classifier  # noqa: E402

CONFIG = CONFIG_DIR / 'mmdet' / 'mask-rcnn_deit-s16-distilled_simple-fpn_lsj-100e_coco.py'
IMG = 64
NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def mmdet_scope():
    """mmdet's registries in its own default scope, restored afterwards for other tests."""
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


def _tiny_cfg(init_cfg=None) -> Config:
    """The config file shrunk to a 4-layer, 32-channel DeiT on 64x64 inputs."""
    cfg = Config.fromfile(str(CONFIG))
    assert cfg.default_scope == 'mmdet'
    model = cfg.model
    assert model.backbone.type == 'mmdeit.DistilledVisionTransformer'
    assert model.backbone.out_type == 'featmap' and model.backbone.out_indices == (11,)
    assert model.neck.type == 'mmdeit.SimpleFPN'
    model.backbone.update(arch=TINY_ARCH, img_size=IMG, out_indices=(3,), init_cfg=init_cfg)
    model.data_preprocessor.batch_augments[0].size = (IMG, IMG)
    model.neck.update(in_channels=32, out_channels=16)
    model.rpn_head.update(in_channels=16, feat_channels=16)
    roi = model.roi_head
    roi.bbox_roi_extractor.out_channels = 16
    roi.bbox_head.update(
        in_channels=16, conv_out_channels=16, fc_out_channels=32, num_classes=NUM_CLASSES
    )
    roi.mask_roi_extractor.out_channels = 16
    roi.mask_head.update(in_channels=16, conv_out_channels=16, num_classes=NUM_CLASSES)
    model.train_cfg.rcnn.sampler.num = 64
    return cfg


def _batch(batch_size=2, size=IMG) -> dict:
    inputs, samples = [], []
    for i in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8))
        boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 30.0]])[: i + 1]
        masks = np.zeros((len(boxes), size, size), dtype=np.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            mask[y1:y2, x1:x2] = 1
        sample = DetDataSample(
            metainfo=dict(img_shape=(size, size), ori_shape=(size, size), scale_factor=(1.0, 1.0))
        )
        sample.gt_instances = InstanceData(
            bboxes=boxes,
            labels=torch.arange(len(boxes)) % NUM_CLASSES,
            masks=BitmapMasks(masks, size, size),
        )
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_deit_backbone_and_simple_fpn_build_from_mmdet_registry():
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


def test_mask_rcnn_from_config_trains_one_step_and_predicts():
    cfg = _tiny_cfg()
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert type(model.backbone) is DistilledVisionTransformer and type(model.neck) is SimpleFPN
    # the heads' norm is mmpretrain's LN2d, named with its scope from mmdet's
    assert type(model.roi_head.mask_head.convs[0].norm).__name__ == 'LayerNorm2d'
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)

    model.train()
    data = model.data_preprocessor(_batch(), training=True)
    assert data['inputs'].shape == (2, 3, IMG, IMG)
    feats = model.extract_feat(data['inputs'])
    assert [f.shape[-1] for f in feats] == [IMG // s for s in (4, 8, 16, 32, 64)]
    losses = model(**data, mode='loss')
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'} <= losses.keys()
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and all(
        torch.isfinite(torch.as_tensor(v)) for v in log_vars.values()
    )
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    optim_wrapper.backward(loss)
    # The featmap holds no extra tokens, but both took part in attention: they get gradients.
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
        assert isinstance(result, DetDataSample)
        pred = result.pred_instances
        assert {'bboxes', 'scores', 'labels', 'masks'} <= set(pred.keys())
        assert pred.bboxes.shape == (len(pred), 4)
        assert pred.masks.shape == (len(pred), IMG, IMG)
        assert len(pred) > 0 and int(pred.labels.max()) < NUM_CLASSES


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
