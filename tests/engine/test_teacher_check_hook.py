"""TeacherCheckHook: the teacher's val accuracy is measured and logged before training."""

import copy
import logging
import uuid

import pytest
import torch
import torch.nn as nn
from mmengine.runner import Runner
from mmpretrain.structures import DataSample
from torch.utils.data import Dataset

from mmdeit.engine import TeacherCheckHook
from mmdeit.registry import HOOKS, MODELS

from ..conftest import TINY_ARCH

NUM_CLASSES = 3
IMG = 32


class _ChannelTeacher(nn.Module):
    """Predicts the brightest channel: perfect on :class:`_Dataset` (or reversed: wrong)."""

    def __init__(self, reverse: bool = False):
        super().__init__()
        self.reverse = reverse
        self.sizes = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        logits = x.mean(dim=(2, 3))
        return logits.flip(1) if self.reverse else logits


class _Dataset(Dataset):
    """Images of class k: channel k at 255, the others at 0."""

    metainfo = dict(classes=[str(k) for k in range(NUM_CLASSES)])

    def __init__(self, n: int = 6):
        self.items = []
        for i in range(n):
            img = torch.zeros(3, IMG, IMG, dtype=torch.uint8)
            img[i % NUM_CLASSES] = 255
            self.items.append(dict(inputs=img, data_samples=DataSample().set_gt_label(i % 3)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict:
        return copy.deepcopy(self.items[idx])


def _model(teacher: nn.Module, **kwargs) -> nn.Module:
    return MODELS.build(
        dict(
            type='DistilledImageClassifier',
            backbone=dict(
                type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=IMG, patch_size=8
            ),
            head=dict(
                type='DeiTClsHead',
                num_classes=NUM_CLASSES,
                in_channels=32,
                loss=dict(type='DistillationLoss', mode='hard'),
            ),
            teacher=teacher,
            data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[127.5] * 3, std=[127.5] * 3),
            **kwargs,
        )
    )


def _loader() -> dict:
    return dict(
        dataset=_Dataset(),
        batch_size=2,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=False),
    )


def _runner(model, work_dir, custom_hooks=(), val=True) -> Runner:
    val_args = dict(val_dataloader=_loader(), val_cfg=dict(), val_evaluator=dict(type='Accuracy'))
    return Runner(
        model=model,
        work_dir=str(work_dir),
        train_dataloader=_loader(),
        train_cfg=dict(by_epoch=False, max_iters=1, val_interval=10),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=None),
        custom_hooks=list(custom_hooks),
        default_scope='mmdeit',
        experiment_name=f'teacher_check_{uuid.uuid4().hex}',  # its own message hub
        log_level='WARNING',
        **(val_args if val else {}),
    )


def test_registered_and_exported():
    assert HOOKS.get('TeacherCheckHook') is TeacherCheckHook


def test_perfect_teacher_logs_100_before_training(tmp_path):
    teacher = _ChannelTeacher()
    model = _model(teacher, teacher_input=dict(size=(16, 16), mean=[0.0] * 3, std=[1.0] * 3))
    runner = _runner(model, tmp_path, custom_hooks=[dict(type='TeacherCheckHook')])
    runner.train()
    assert runner.message_hub.get_scalar('teacher/accuracy_top1').current() == 100.0
    # Through the model's teacher adaptation: the check's 3 val batches, 1 training batch, then
    # the validation at the last iteration, where the model runs its teacher for PerHeadAccuracy
    # (eval_teacher) on the same 3 batches.
    assert teacher.sizes == [(16, 16)] * 7


def test_max_batches_and_random_state(tmp_path):
    teacher = _ChannelTeacher(reverse=True)  # right on class 1 only
    runner = _runner(_model(teacher), tmp_path)
    hook = TeacherCheckHook(max_batches=1)
    state = torch.get_rng_state()
    hook.before_train(runner)
    assert torch.equal(torch.get_rng_state(), state)  # training's random stream is unchanged
    assert len(teacher.sizes) == 1  # one batch: samples of classes 0 and 1
    assert runner.message_hub.get_scalar('teacher/accuracy_top1').current() == 50.0


def test_near_chance_warns_and_min_accuracy_stops_before_training(tmp_path):
    runner = _runner(_model(_ChannelTeacher(reverse=True)), tmp_path)
    handler = _ListHandler()
    runner.logger.addHandler(handler)
    try:
        with pytest.raises(RuntimeError, match=r'top-1 accuracy 33\.33% .* below min_accuracy=50'):
            TeacherCheckHook(max_batches=None, min_accuracy=50).before_train(runner)
    finally:
        runner.logger.removeHandler(handler)
    assert any('near chance level (33.33% top-1, chance 33.33%' in m for m in handler.messages)
    assert runner.message_hub.get_scalar('teacher/accuracy_top1').current() == pytest.approx(
        100 / 3
    )


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_nothing_to_check(tmp_path):
    no_teacher = MODELS.build(
        dict(
            type='DistilledImageClassifier',
            backbone=dict(
                type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=IMG, patch_size=8
            ),
            head=dict(type='DeiTClsHead', num_classes=NUM_CLASSES, in_channels=32),
        )
    )
    for model, val in ((no_teacher, True), (_model(_ChannelTeacher()), False)):
        runner = _runner(model, tmp_path, val=val)
        TeacherCheckHook().before_train(runner)
        assert 'teacher/accuracy_top1' not in runner.message_hub.log_scalars


@pytest.mark.parametrize(
    'kwargs, match',
    [
        (dict(max_batches=0), r'max_batches must be a positive int or None, got 0'),
        (dict(min_accuracy=150), r'min_accuracy must be a number in \[0, 100\]'),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TeacherCheckHook(**kwargs)
