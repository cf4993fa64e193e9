"""The mmpretrain idiom ``val_evaluator = dict(type='Accuracy', topk=(1,))`` in a user's child
of a shipped recipe, for their own 3-class folder: it trains, validates (per-head keys kept) and
tests through the CLI; the recipe's top-5 on 3 classes is refused before training."""

from pathlib import Path

import pytest
import torch

from .conftest import run_cli, tool, user_config, write_class_folders

pytestmark = pytest.mark.journey

BASE = 'deit/deit-tiny-distilled_8xb128_in1k.py'
CLASSES = ('cat', 'dog', 'fox')


def _body(home: Path, evaluator: str) -> str:
    """The user's 3-class fine-tune of the recipe: tiny model and images to stay fast."""
    return f"""
num_classes = 3
tiny = dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
model = dict(
    backbone=dict(arch=tiny, img_size=32),
    head=dict(num_classes=num_classes, in_channels=32),
    teacher=dict(_delete_=True, type='TimmClassifier', model_name='resnet10t',
                 num_classes=num_classes, pretrained=False),
    teacher_ckpt='{home}/teacher.pth',
)
data_preprocessor = dict(num_classes=num_classes)
pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=32, backend='pillow'),
    dict(type='PackInputs'),
]
data = dict(_delete_=True, type='CustomDataset', data_root='{home}/data', pipeline=pipeline)
train_dataloader = dict(batch_size=3, num_workers=0, persistent_workers=False,
                        dataset=dict(data, data_prefix='train'))
val_dataloader = dict(batch_size=3, num_workers=0, persistent_workers=False,
                      dataset=dict(data, data_prefix='val'))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
{evaluator}
"""


@pytest.fixture(scope='module')
def home(tmp_path_factory) -> Path:
    """The user's folder: 3 class folders and their own 3-class teacher."""
    from mmpretrain.models import TimmClassifier

    home = tmp_path_factory.mktemp('evaluator_user')
    write_class_folders(home / 'data', CLASSES, size=(40, 44))
    torch.manual_seed(0)
    teacher = TimmClassifier(model_name='resnet10t', num_classes=3, pretrained=False)
    torch.save({'state_dict': teacher.state_dict()}, home / 'teacher.pth')
    return home


def test_the_mmpretrain_override_trains_validates_and_tests(home):
    evaluator = "val_evaluator = dict(type='Accuracy', topk=(1,))\ntest_evaluator = val_evaluator"
    config = user_config(home, BASE, _body(home, evaluator), name='top1.py')
    out = run_cli([tool('train.py'), config.name, '--work-dir', 'run'], home, 'train').stdout
    val = [line for line in out.splitlines() if 'Epoch(val) [1]' in line][-1]
    for key in ('accuracy/top1', 'per_head/cls_top1', 'per_head/fused_top1'):
        assert f'{key}: ' in val, val
    assert 'accuracy/top5' not in out and 'per_head/teacher_agreement' in val

    command = [tool('test.py'), config.name, 'run/epoch_1.pth', '--work-dir', 'test']
    out = run_cli(command, home, 'test').stdout
    test = [line for line in out.splitlines() if 'Epoch(test)' in line][-1]
    assert 'accuracy/top1: ' in test and 'per_head/dist_top1: ' in test, test


def _refused(proc_output: str, field: str) -> None:
    assert 'Epoch(train)' not in proc_output and 'Traceback' not in proc_output
    assert f'{field}: Accuracy topk=(1, 5) asks for top-5 of only 3 classes' in proc_output
    assert f'`{field} = dict(type="Accuracy", topk=(1,))`' in proc_output


def test_the_recipe_top5_on_3_classes_is_refused_before_training(home):
    config = user_config(home, BASE, _body(home, ''), name='top5.py')
    proc = run_cli([tool('train.py'), config.name], home, 'top5', expect_ok=False)
    assert proc.returncode != 0
    _refused(proc.stdout, 'val_evaluator')


def test_a_child_that_changes_val_evaluator_only_hears_of_test_evaluator(home, monkeypatch):
    from tools.train import main as train_main

    evaluator = "val_evaluator = dict(type='Accuracy', topk=(1,))"
    config = user_config(home, BASE, _body(home, evaluator), name='val_only.py')
    monkeypatch.chdir(home)
    with pytest.raises(SystemExit) as refused:
        train_main([str(config), '--work-dir', str(home / 'val_only')])
    _refused(str(refused.value.code), 'test_evaluator')
    assert not (home / 'val_only').exists()  # refused before the Runner made its work dir
