"""The real ImageNet recipes, run for 2 iterations through tools/train.py on a generated
ImageNet-layout folder, changed only through --cfg-options."""

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from tools.train import main as train_main

WNIDS = ('n00000001', 'n00000002')


@pytest.fixture(scope='module')
def tiny_imagenet(tmp_path_factory):
    """data_root/{train/<wnid>/*.png, val/*.png, meta/{train,val}.txt} with 4 + 2 images."""
    root = tmp_path_factory.mktemp('imagenet')
    rng = np.random.default_rng(0)
    (root / 'meta').mkdir()
    (root / 'val').mkdir()
    train_lines, val_lines = [], []
    for label, wnid in enumerate(WNIDS):
        (root / 'train' / wnid).mkdir(parents=True)
        for i in range(2):
            name = f'{wnid}/{i}.png'
            Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(
                root / 'train' / name
            )
            train_lines.append(f'{name} {label}')
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(
            root / 'val' / f'{label}.png'
        )
        val_lines.append(f'{label}.png {label}')
    (root / 'meta' / 'train.txt').write_text('\n'.join(train_lines) + '\n')
    (root / 'meta' / 'val.txt').write_text('\n'.join(val_lines) + '\n')
    return root


def _options(root, work_dir):
    opts = [
        f'work_dir={work_dir}',
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [
            f'{loader}.dataset.data_root={root}',
            f'{loader}.batch_size=2',
            f'{loader}.num_workers=0',
            f'{loader}.persistent_workers=False',
        ]
    return opts


def _run(config, root, work_dir, *extra):
    train_main([config, '--cfg-options', *_options(root, work_dir), *extra])
    return Config.fromfile(str(next(work_dir.glob('*/vis_data/config.py'))))


def test_deit_small_recipe_trains_two_iterations(tiny_imagenet, tmp_path):
    work_dir = tmp_path / 'small'
    cfg = _run('configs/deit/deit-small_8xb128_in1k.py', tiny_imagenet, work_dir)
    assert cfg.model.backbone.arch == 'deit-small'
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    assert 'ema_state_dict' in ckpt  # the recipe's EMA hook ran
    groups = ckpt['optimizer']['param_groups']
    assert all(g['fused'] for g in groups)  # the recipe's AdamW is torch's fused one
    assert {g['weight_decay'] for g in groups} == {0.0, 0.05}  # no decay on norms/tokens
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'Epoch(train) [1][2/2]' in log and 'accuracy/top1' in log


def test_deit_small_distilled_recipe_trains_with_a_teacher(tiny_imagenet, tmp_path):
    from mmpretrain.models import TimmClassifier

    teacher = TimmClassifier(model_name='resnet10t', num_classes=1000, pretrained=False)
    teacher_ckpt = tmp_path / 'teacher.pth'
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)
    work_dir = tmp_path / 'distilled'
    cfg = _run(
        'configs/deit/deit-small-distilled_8xb128_in1k.py',
        tiny_imagenet,
        work_dir,
        'model.teacher.model_name=resnet10t',
        f'model.teacher_ckpt={teacher_ckpt}',
    )
    assert cfg.model.teacher_channels_last is True
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert not any(k.startswith('teacher') for k in ckpt['state_dict'])
    assert 'head.layers.head_dist.weight' in ckpt['state_dict']
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'loss_distill' in log and 'loss_cls' in log


def test_missing_imagenet_fails_at_once_with_the_layout(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(
            [
                'configs/deit/deit-small_8xb128_in1k.py',
                '--work-dir',
                str(tmp_path),
                '--cfg-options',
                f'train_dataloader.dataset.data_root={tmp_path}/nowhere',
            ]
        )
    message = str(exit_info.value)
    assert 'train_dataloader.dataset' in message and 'nowhere' in message
    assert 'train/<wnid>/<image>.JPEG' in message
    assert 'Traceback' not in message


def test_configs_inherit_through_the_mmdeit_package_prefix(tmp_path):
    child = tmp_path / 'my_config.py'
    child.write_text(
        "_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'\n"
        'model = dict(head=dict(num_classes=10))\n'
    )
    cfg = Config.fromfile(str(child))
    assert cfg.model.backbone.arch == 'deit-small' and cfg.model.head.num_classes == 10
    assert cfg.default_scope == 'mmdeit'
