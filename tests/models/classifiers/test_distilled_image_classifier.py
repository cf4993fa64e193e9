"""Tests of DistilledImageClassifier: the frozen teacher, distilled training and bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from mmpretrain.models import ImageClassifier
from mmpretrain.models.backbones import DistilledVisionTransformer as MMPretrainDistilledViT
from mmpretrain.models.heads import DeiTClsHead as MMPretrainDeiTClsHead
from mmpretrain.structures import DataSample
from torch.utils.data import Dataset

from mmdeit.engine import load_checkpoint_file
from mmdeit.models.classifiers import DistilledImageClassifier
from mmdeit.registry import MODELS

NUM_CLASSES = 4
IMG = 32
TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
PREPROCESSOR = dict(num_classes=NUM_CLASSES, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)


def _student_parts(mode: str = 'hard', alpha: float = 0.5, tau: float = 1.0) -> dict:
    return dict(
        backbone=dict(
            type='DistilledVisionTransformer',
            arch=TINY_ARCH,
            img_size=IMG,
            patch_size=8,
            out_type='cls_token',
        ),
        head=dict(
            type='DeiTClsHead',
            num_classes=NUM_CLASSES,
            in_channels=32,
            loss=dict(type='DistillationLoss', mode=mode, alpha=alpha, tau=tau),
        ),
    )


def _teacher_cfg(num_classes: int = NUM_CLASSES) -> dict:
    # A tiny ResNet with BatchNorm: its running statistics reveal a teacher left in train mode.
    return dict(
        type='ImageClassifier',
        backbone=dict(
            type='ResNet',
            depth=18,
            stem_channels=8,
            base_channels=8,
            num_stages=2,
            strides=(1, 2),
            dilations=(1, 1),
            out_indices=(1,),
        ),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=16),
    )


@pytest.fixture
def teacher_ckpt(tmp_path):
    torch.manual_seed(0)
    teacher = MODELS.build(_teacher_cfg())
    teacher.init_weights()
    for module in teacher.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / 'teacher.pth'
    torch.save({'state_dict': teacher.state_dict()}, path)
    return str(path)


def _model_cfg(teacher_ckpt, mode='hard', **kwargs) -> dict:
    cfg = dict(
        type='DistilledImageClassifier',
        **_student_parts(mode),
        teacher=_teacher_cfg(),
        teacher_ckpt=teacher_ckpt,
        data_preprocessor=copy.deepcopy(PREPROCESSOR),
    )
    cfg.update(kwargs)
    return cfg


def _batch(n: int = 2, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, 256, (3, IMG, IMG), generator=gen, dtype=torch.uint8) for _ in range(n)
    ]
    samples = [DataSample().set_gt_label(i % NUM_CLASSES) for i in range(n)]
    return dict(inputs=inputs, data_samples=samples)


class _TinyDataset(Dataset):
    """Random uint8 images with labels, in the packed format of mmpretrain's pipelines."""

    def __init__(self, n: int = 4):
        batch = _batch(n)
        self.items = [
            dict(inputs=i, data_samples=s) for i, s in zip(batch['inputs'], batch['data_samples'])
        ]
        self.metainfo = dict(classes=[str(i) for i in range(NUM_CLASSES)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        return copy.deepcopy(self.items[idx])


def test_teacher_is_frozen_and_outside_the_module_tree(teacher_ckpt):
    model = MODELS.build(_model_cfg(teacher_ckpt))
    assert isinstance(model, DistilledImageClassifier)
    teacher = model.teacher
    ckpt = torch.load(teacher_ckpt)['state_dict']
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, ckpt[key]), key
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith('teacher') for k in model.state_dict())
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(m is not teacher for m in model.modules())
    model.train()
    assert model.training and model.backbone.training and not teacher.training


def test_teacher_moves_with_the_model(teacher_ckpt):
    model = MODELS.build(_model_cfg(teacher_ckpt))
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.teacher.parameters())
    model.float()
    assert all(p.dtype == torch.float32 for p in model.teacher.parameters())


def test_deepcopy_shares_the_frozen_teacher(teacher_ckpt):
    model = MODELS.build(_model_cfg(teacher_ckpt))
    clone = copy.deepcopy(model)  # what an EMA model does
    assert clone.teacher is model.teacher
    assert clone.backbone is not model.backbone


def test_teacher_sees_the_augmented_student_batch(teacher_ckpt):
    cfg = _model_cfg(
        teacher_ckpt, mode='soft', train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8)])
    )
    model = MODELS.build(cfg)
    model.init_weights()
    seen = {}
    model.backbone.register_forward_pre_hook(lambda m, args: seen.__setitem__('student', args[0]))
    model.teacher.register_forward_pre_hook(lambda m, args: seen.__setitem__('teacher', args[0]))
    torch.manual_seed(1)
    data = model.data_preprocessor(_batch(4), True)
    assert 'gt_score' in data['data_samples'][0]  # Mixup ran
    losses = model(**data, mode='loss')
    assert seen['teacher'] is seen['student']
    # The distillation term is the official soft term with the teacher's logits on that batch.
    cls_logits, dist_logits = model.head.forward_logits(model.extract_feat(data['inputs']))
    with torch.no_grad():
        teacher_logits = model.teacher(data['inputs'], mode='tensor')
    kl = (
        F.kl_div(
            F.log_softmax(dist_logits, 1),
            F.log_softmax(teacher_logits, 1),
            reduction='sum',
            log_target=True,
        )
        / dist_logits.numel()
    )
    assert torch.allclose(losses['loss_distill'], 0.5 * kl, atol=1e-6)


def test_runner_trains_one_iteration_and_checkpoints_the_student_only(teacher_ckpt, tmp_path):
    work_dir = tmp_path / 'work_dir'
    runner = Runner(
        model=_model_cfg(
            teacher_ckpt, mode='hard', train_cfg=dict(augments=[dict(type='CutMix', alpha=1.0)])
        ),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_TinyDataset(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
        ),
        train_cfg=dict(by_epoch=False, max_iters=1, val_interval=1),
        val_dataloader=dict(
            dataset=_TinyDataset(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
        ),
        val_evaluator=dict(type='Accuracy', topk=(1,)),
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1),
        ),
        default_scope='mmdeit',
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_level='WARNING',
    )
    model = runner.model
    teacher_before = copy.deepcopy(model.teacher.state_dict())
    grads = {}
    for name in ('head', 'head_dist'):
        weight = getattr(model.head.layers, name).weight
        weight.register_hook(lambda g, name=name: grads.__setitem__(name, g.abs().sum().item()))
    runner.train()

    assert grads['head'] > 0 and grads['head_dist'] > 0
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key  # incl. BN running statistics
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not model.teacher.training
    for key in ('loss_cls', 'loss_distill'):
        assert runner.message_hub.get_scalar(f'train/{key}').current() > 0
    accuracy = runner.message_hub.get_scalar('val/accuracy/top1').current()  # validated
    assert 0 <= accuracy <= 100

    ckpt = load_checkpoint_file(str(work_dir / 'iter_1.pth'), map_location='cpu')
    assert ckpt['state_dict'] and not any(k.startswith('teacher') for k in ckpt['state_dict'])
    num_student_params = len(list(model.parameters()))
    assert sum(len(g['params']) for g in ckpt['optimizer']['param_groups']) == num_student_params
    # Teacher-less models: mmdeit's parts in an ImageClassifier, and mmpretrain's own DeiT.
    parts = _student_parts('none')
    plain = ImageClassifier(
        backbone=MODELS.build(parts['backbone']), head=MODELS.build(parts['head'])
    )
    mmpretrain_deit = ImageClassifier(
        backbone=MMPretrainDistilledViT(
            **{k: v for k, v in parts['backbone'].items() if k != 'type'}
        ),
        head=MMPretrainDeiTClsHead(num_classes=NUM_CLASSES, in_channels=32),
    )
    model.eval()
    data = model.data_preprocessor(_batch(2, seed=3), False)
    with torch.no_grad():
        expected = model(**data, mode='tensor')
        for other in (plain, mmpretrain_deit):
            other.load_state_dict(ckpt['state_dict'], strict=True)
            other.eval()
            assert torch.allclose(other(**data, mode='tensor'), expected, atol=1e-5)


@pytest.mark.parametrize('eval_teacher', [False, True])
def test_predict_is_the_students(teacher_ckpt, eval_teacher):
    # the teacher only adds its own label (for PerHeadAccuracy), and only with eval_teacher
    model = MODELS.build(dict(_model_cfg(teacher_ckpt), eval_teacher=eval_teacher))
    model.eval()
    if not eval_teacher:
        model.teacher.register_forward_pre_hook(lambda *args: pytest.fail('teacher was called'))
    data = model.data_preprocessor(_batch(2), False)
    with torch.no_grad():
        samples = model(**data, mode='predict')
        feats = model.extract_feat(data['inputs'])
        cls_logits, dist_logits = model.head.forward_logits(feats)
    scores = torch.stack([s.pred_score for s in samples])
    assert torch.allclose(scores, F.softmax((cls_logits + dist_logits) / 2, 1), atol=1e-6)
    assert ('teacher_pred_label' in samples[0]) == eval_teacher


def test_none_mode_trains_without_teacher():
    cfg = dict(
        type='DistilledImageClassifier',
        **_student_parts('none'),
        data_preprocessor=copy.deepcopy(PREPROCESSOR),
    )
    model = MODELS.build(cfg)
    assert model.teacher is None
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    losses = model.train_step(_batch(2), optim)
    assert losses['loss_distill'].item() == 0.0 and losses['loss_cls'].item() > 0


def test_teacher_is_ignored_in_none_mode(teacher_ckpt):
    model = MODELS.build(_model_cfg(teacher_ckpt, mode='none'))
    assert model.teacher is None


def test_teacher_from_config_file(teacher_ckpt, tmp_path):
    cfg_path = tmp_path / 'teacher_cfg.py'
    cfg_path.write_text(f'model = {_teacher_cfg()!r}\n')
    model = MODELS.build(_model_cfg(teacher_ckpt, teacher=str(cfg_path)))
    ckpt = torch.load(teacher_ckpt)['state_dict']
    assert torch.equal(model.teacher.head.fc.weight, ckpt['head.fc.weight'])


def test_teacher_ckpt_in_official_deit_layout(teacher_ckpt, tmp_path):
    path = tmp_path / 'official.pth'
    torch.save({'model': torch.load(teacher_ckpt)['state_dict']}, path)
    model = MODELS.build(_model_cfg(str(path)))
    assert torch.equal(model.teacher.head.fc.weight, torch.load(path)['model']['head.fc.weight'])


def test_timm_teacher(tmp_path):
    pytest.importorskip('timm')
    timm_cfg = dict(
        type='TimmClassifier', model_name='resnet10t', pretrained=False, num_classes=NUM_CLASSES
    )
    teacher = MODELS.build(timm_cfg)
    path = tmp_path / 'timm.pth'
    torch.save(teacher.state_dict(), path)  # timm's own key layout
    model = MODELS.build(
        dict(
            type='DistilledImageClassifier',
            **_student_parts('soft'),
            teacher=timm_cfg,
            teacher_ckpt=str(path),
        )
    )
    assert torch.equal(model.teacher.model.fc.weight, teacher.model.fc.weight)
    with pytest.raises(ValueError, match='num_classes'):
        MODELS.build(
            dict(
                type='DistilledImageClassifier',
                **_student_parts('soft'),
                teacher=dict(timm_cfg, num_classes=NUM_CLASSES + 1),
            )
        )


def test_class_count_mismatch_is_a_build_error():
    with pytest.raises(ValueError, match='teacher has 5 classes.*num_classes=4'):
        MODELS.build(_model_cfg(None, teacher=_teacher_cfg(num_classes=5)))


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_missing_teacher_is_an_error(mode):
    with pytest.raises(ValueError, match='needs a teacher'):
        MODELS.build(dict(type='DistilledImageClassifier', **_student_parts(mode)))


def test_missing_teacher_ckpt_path_is_an_error(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='teacher_ckpt.*nope.pth'):
        MODELS.build(_model_cfg(missing))


def test_missing_teacher_config_file_is_an_error(teacher_ckpt, tmp_path):
    with pytest.raises(FileNotFoundError, match='teacher config file'):
        MODELS.build(_model_cfg(teacher_ckpt, teacher=str(tmp_path / 'nope.py')))


def test_teacher_ckpt_without_teacher_is_an_error(teacher_ckpt):
    with pytest.raises(ValueError, match='teacher is None'):
        MODELS.build(
            dict(
                type='DistilledImageClassifier', **_student_parts('none'), teacher_ckpt=teacher_ckpt
            )
        )


def test_wrong_teacher_ckpt_is_an_error(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(1)}}, path)
    with pytest.raises(RuntimeError, match='foo.weight|missing'):
        MODELS.build(_model_cfg(str(path)))


def test_head_must_be_deit_head(teacher_ckpt):
    cfg = _model_cfg(teacher_ckpt)
    cfg['head'] = dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=32)
    with pytest.raises(TypeError, match='DeiTClsHead'):
        MODELS.build(cfg)


def test_bad_teacher_type():
    with pytest.raises(TypeError, match='teacher must be'):
        MODELS.build(dict(type='DistilledImageClassifier', **_student_parts('hard'), teacher=3))
