"""tools/train.py on the ImageNet recipes without ImageNet, and ``mmdeit::`` bases in-process.

The recipes themselves are trained, tested and run from a user's folder in tests/journeys."""

import pytest
from mmengine.config import Config

from tools.train import main as train_main


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
