"""A teacher that differs from the student: other classes (``teacher_num_classes``), another
input size and normalisation (``teacher_input``)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.structures import DataSample
from torch.utils.data import Dataset

from mmdeit.apis import init_model
from mmdeit.models.classifiers import student_model_cfg
from mmdeit.models.classifiers.teacher_input import check_teacher_size
from mmdeit.registry import MODELS

from ...conftest import TINY_ARCH
from .test_distilled_image_classifier import _teacher_cfg

STUDENT_CLASSES, TEACHER_CLASSES = 3, 5
IMG = 32
STUDENT_MEAN, STUDENT_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
TEACHER_MEAN, TEACHER_STD = [127.5, 100.0, 90.0], [64.0, 50.0, 70.0]


def _student(mode='hard', teacher_num_classes=TEACHER_CLASSES, inference_mode='cls') -> dict:
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
            num_classes=STUDENT_CLASSES,
            in_channels=32,
            inference_mode=inference_mode,
            teacher_num_classes=teacher_num_classes,
            loss=dict(type='DistillationLoss', mode=mode),
        ),
    )


def _cfg(mode='hard', teacher_classes=TEACHER_CLASSES, to_rgb=False, **kwargs) -> dict:
    cfg = dict(
        type='DistilledImageClassifier',
        **_student(mode),
        teacher=_teacher_cfg(num_classes=teacher_classes),
        data_preprocessor=dict(
            num_classes=STUDENT_CLASSES, mean=STUDENT_MEAN, std=STUDENT_STD, to_rgb=to_rgb
        ),
    )
    cfg.update(kwargs)
    return cfg


def _raw_batch(n=4, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    inputs = [
        torch.randint(0, 256, (3, IMG, IMG), generator=gen, dtype=torch.uint8) for _ in range(n)
    ]
    samples = [DataSample().set_gt_label(i % STUDENT_CLASSES) for i in range(n)]
    return dict(inputs=inputs, data_samples=samples)


class _Dataset(Dataset):
    def __init__(self, n=4):
        batch = _raw_batch(n)
        self.items = [dict(inputs=i, data_samples=s) for i, s in zip(*batch.values())]
        self.metainfo = dict(classes=[str(i) for i in range(STUDENT_CLASSES)])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, idx):
        return copy.deepcopy(self.items[idx])


def _loader():
    return dict(
        dataset=_Dataset(),
        batch_size=2,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
    )


@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_teacher_with_other_classes_trains_and_predicts_with_cls(mode, tmp_path):
    augments = dict(augments=[dict(type='CutMix', alpha=1.0)]) if mode == 'soft' else None
    model = MODELS.build(_cfg(mode, train_cfg=augments))
    model.init_weights()
    head_dist = model.head.layers.head_dist
    assert tuple(head_dist.weight.shape) == (TEACHER_CLASSES, 32)
    assert tuple(model.head.layers.head.weight.shape) == (STUDENT_CLASSES, 32)
    grads = {}
    head_dist.weight.register_hook(lambda g: grads.__setitem__('dist', g.abs().sum().item()))
    runner = Runner(
        model=model,
        work_dir=str(tmp_path),
        train_dataloader=_loader(),
        train_cfg=dict(by_epoch=False, max_iters=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1), checkpoint=None),
        default_scope='mmdeit',
        log_level='WARNING',
    )
    runner.train()
    assert grads['dist'] > 0
    for key in ('loss', 'loss_cls', 'loss_distill'):
        value = runner.message_hub.get_scalar(f'train/{key}').current()
        assert torch.isfinite(torch.tensor(value)) and value > 0, key
    model.eval()
    data = model.data_preprocessor(_raw_batch(2, seed=1), False)
    with torch.no_grad():
        samples = model(**data, mode='predict')
        cls_logits, _ = model.head.forward_logits(model.extract_feat(data['inputs']))
    scores = torch.stack([s.pred_score for s in samples])
    assert scores.shape == (2, STUDENT_CLASSES)
    torch.testing.assert_close(scores, F.softmax(cls_logits, 1))


@pytest.mark.parametrize('inference_mode', ['fusion', 'dist'])
def test_fusion_and_dist_are_refused_with_other_teacher_classes(inference_mode):
    cfg = _cfg()
    cfg['head']['inference_mode'] = inference_mode
    with pytest.raises(
        ValueError, match=f"inference_mode '{inference_mode}'.*teacher_num_classes=5"
    ):
        MODELS.build(cfg)


def test_class_count_mismatch_points_to_teacher_num_classes():
    cfg = _cfg()
    cfg['head'].pop('teacher_num_classes')
    cfg['head']['inference_mode'] = 'fusion'
    with pytest.raises(
        ValueError,
        match=r'teacher has 5 classes but the student head has num_classes=3.*'
        r"set the head's teacher_num_classes=5",
    ):
        MODELS.build(cfg)
    with pytest.raises(
        ValueError, match='teacher has 4 classes but the student head has teacher_num_classes=5'
    ):
        MODELS.build(_cfg(teacher_classes=4))


def test_student_checkpoint_loads_into_the_student_config(tmp_path):
    model_cfg = _cfg(teacher_input=dict(size=(24, 24)))
    model = MODELS.build(copy.deepcopy(model_cfg))
    model.init_weights()
    student_cfg = student_model_cfg(model_cfg)
    assert student_cfg['type'] == 'ImageClassifier' and 'teacher_input' not in student_cfg
    assert student_cfg['head']['teacher_num_classes'] == TEACHER_CLASSES
    ckpt = tmp_path / 'student.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    student = init_model(Config(dict(model=model_cfg, default_scope='mmdeit')), str(ckpt))
    assert type(student).__name__ == 'ImageClassifier'
    assert tuple(student.head.layers.head_dist.weight.shape) == (TEACHER_CLASSES, 32)
    model.eval()
    data = model.data_preprocessor(_raw_batch(2), False)
    with torch.no_grad():
        torch.testing.assert_close(student(**data, mode='tensor'), model(**data, mode='tensor'))


def _expected_teacher_input(raw: dict, size, mode: str, to_rgb: bool) -> torch.Tensor:
    """The teacher's batch computed from the raw uint8 images in float64: resized, then
    normalised with the teacher's mean/std.

    The sizes tested are the student's times powers of two, so that torch's source coordinates
    are exact in float32 (the model's batch) as in float64 (here); other ratios round them in
    float32, which moves the values by ~1e-5.
    """
    pixels = torch.stack(raw['inputs']).double()
    if to_rgb:
        pixels = pixels.flip(1)
    align = dict(align_corners=False) if mode in ('bilinear', 'bicubic') else {}
    resized = F.interpolate(pixels, size=size, mode=mode, **align)
    mean = torch.tensor(TEACHER_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(TEACHER_STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((resized - mean) / std).float()


@pytest.mark.parametrize(
    'size, mode, to_rgb, channels_last',
    [
        ((16, 64), 'bilinear', False, False),
        ((64, 16), 'bicubic', True, False),
        ((16, 16), 'area', False, True),
        ((64, 64), 'nearest', True, True),
        ((128, 64), 'bicubic', False, True),
        (None, 'bilinear', False, False),
    ],
)
def test_teacher_gets_the_resized_renormalised_batch(size, mode, to_rgb, channels_last):
    teacher_input = dict(mean=TEACHER_MEAN, std=TEACHER_STD, interpolation=mode)
    if size is not None:
        teacher_input['size'] = size
    cfg = _cfg(to_rgb=to_rgb, teacher_input=teacher_input, teacher_channels_last=channels_last)
    model = MODELS.build(cfg)
    seen = {}

    def spy(module, args):
        seen.update(inputs=args[0].clone(), inference=torch.is_inference_mode_enabled())
        seen['channels_last'] = args[0].is_contiguous(memory_format=torch.channels_last)

    model.teacher.register_forward_pre_hook(spy)
    model.backbone.register_forward_pre_hook(lambda m, args: seen.__setitem__('student', args[0]))
    raw = _raw_batch(4)
    data = model.data_preprocessor(copy.deepcopy(raw), True)
    student_inputs = data['inputs'].clone()
    losses = model.loss(data['inputs'], data['data_samples'])
    sum(losses.values()).backward()

    expected = _expected_teacher_input(raw, size or (IMG, IMG), mode, to_rgb)
    torch.testing.assert_close(seen['inputs'], expected, atol=1e-6, rtol=1e-6)
    assert seen['inference'] and seen['channels_last'] == channels_last
    assert torch.equal(seen['student'], student_inputs)  # the student's batch is unchanged


def test_teacher_input_keeps_the_student_normalisation_when_only_resizing():
    model = MODELS.build(_cfg(teacher_input=dict(size=(16, 16), interpolation='area')))
    inputs = torch.randn(2, 3, IMG, IMG)
    adapted = model.teacher_input(inputs)
    torch.testing.assert_close(adapted, F.avg_pool2d(inputs, 2))


def _vit_teacher() -> dict:
    return dict(
        type='ImageClassifier',
        backbone=dict(type='VisionTransformer', arch=TINY_ARCH, img_size=IMG, patch_size=8),
        head=dict(type='VisionTransformerClsHead', num_classes=TEACHER_CLASSES, in_channels=32),
    )


def test_vit_teacher_size_is_checked_at_build_time():
    with pytest.raises(
        ValueError,
        match=r'teacher_input\.size \(30, 30\) is not divisible by '
        r'the patch size \(8, 8\)',
    ):
        MODELS.build(_cfg(teacher=_vit_teacher(), teacher_input=dict(size=(30, 30))))
    model = MODELS.build(_cfg(teacher=_vit_teacher(), teacher_input=dict(size=(48, 40))))
    data = model.data_preprocessor(_raw_batch(2), True)
    assert model.teacher_logits(data['inputs']).shape == (2, TEACHER_CLASSES)


def test_convnet_teacher_size_cannot_be_told():
    teacher = MODELS.build(_teacher_cfg())
    assert check_teacher_size(teacher, (30, 31)) is False
