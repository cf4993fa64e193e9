"""Every digits config trains for one epoch through tools/train.py (on a subset of the images),
changed only through --cfg-options; the students learn from the teacher the smoke run saved."""

import json

import pytest
import torch

from tools.train import main as train_main

CONFIG_DIR = 'configs/digits'
TEACHER = f'{CONFIG_DIR}/resnet-digits_1xb64_digits.py'
STUDENTS = {
    'none': f'{CONFIG_DIR}/deit-digits-tiny_1xb64_digits.py',
    'hard': f'{CONFIG_DIR}/deit-digits-tiny-distilled-hard_1xb64_digits.py',
    'soft': f'{CONFIG_DIR}/deit-digits-tiny-distilled-soft_1xb64_digits.py',
}


def _train(config, work_dir, *options):
    opts = [
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
        'train_dataloader.dataset.indices=16',
        'val_dataloader.dataset.indices=8',
    ]
    for loader in ('train_dataloader', 'val_dataloader'):
        opts += [f'{loader}.batch_size=8', f'{loader}.num_workers=0']
    train_main([config, '--work-dir', str(work_dir), '--no-persistent-workers',
                '--cfg-options', *opts, *options])  # fmt: skip
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    return [json.loads(line) for line in scalars]


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
    """(work_dir, logged scalars) of the teacher config's one-epoch run."""
    work_dir = tmp_path_factory.mktemp('digits_teacher')
    return work_dir, _train(TEACHER, work_dir)


def test_teacher_config_trains_one_epoch(teacher_run):
    work_dir, scalars = teacher_run
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2  # 16 images, batch 8
    assert 'backbone.conv1.weight' in ckpt['state_dict']  # the ResNet
    assert any('accuracy/top1' in s for s in scalars)


@pytest.mark.parametrize('mode', ['none', 'hard', 'soft'])
def test_student_config_trains_one_epoch(mode, teacher_run, tmp_path):
    teacher_ckpt = teacher_run[0] / 'epoch_1.pth'
    options = [] if mode == 'none' else [f'model.teacher_ckpt={teacher_ckpt}']
    scalars = _train(STUDENTS[mode], tmp_path, *options)
    ckpt = torch.load(tmp_path / 'epoch_1.pth', map_location='cpu', weights_only=False)
    state_dict = ckpt['state_dict']
    assert 'backbone.dist_token' in state_dict and 'head.layers.head_dist.weight' in state_dict
    assert not any('conv1' in key for key in state_dict)  # the teacher is not saved
    train_logs = [s for s in scalars if 'loss_distill' in s]
    assert len(train_logs) == 2
    if mode == 'none':
        assert all(s['loss_distill'] == 0 for s in train_logs)
    else:
        assert all(s['loss_distill'] > 0 for s in train_logs)
    assert any('accuracy/top1' in s for s in scalars)
