"""tools/analysis/amp_speed.py without training: its arguments, the config it writes (the
recipe on generated data, every loader pointed there), how it reads a run's log."""

import json

import pytest
from mmengine.config import Config

from tools.analysis import amp_speed, gpu_check


@pytest.mark.parametrize(
    'argv, match',
    [
        (['--batch', '0'], '--batch must be >= 1'),
        (['--iters', '3', '--skip', '3'], r'--skip must be in \[0, --iters\)'),
        (['--workers', '-1'], '--workers must be >= 0'),
        (['--repeats', '0'], '--repeats must be >= 1'),
    ],
)
def test_bad_values_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        amp_speed.parse_args(argv)


def test_the_config_is_the_recipe_on_the_generated_data(tmp_path):
    args = amp_speed.parse_args(['--batch', '4', '--iters', '5', '--arch', 'deit-tiny'])
    path = amp_speed.config(args, tmp_path, tmp_path / 'imagenet')
    cfg = Config.fromfile(str(path))
    recipe = Config.fromfile(str(gpu_check.RECIPE))
    assert cfg.optim_wrapper == recipe.optim_wrapper  # the recipe's fused AdamW, no AMP here
    assert cfg.model.backbone.drop_path_rate == recipe.model.backbone.drop_path_rate
    for loader in ('train', 'val', 'test'):
        assert cfg[f'{loader}_dataloader'].dataset.data_root == str(tmp_path / 'imagenet')
    assert cfg.train_dataloader.batch_size == 4
    # 8 images a epoch: 3 epochs for at least 5 iterations, and no validation among them
    assert cfg.train_cfg.max_epochs == 3 < cfg.train_cfg.val_interval
    assert cfg.model.backbone.arch == 'deit-tiny' and cfg.model.head.in_channels == 192


def test_iteration_times_skip_the_warm_up(tmp_path):
    log = tmp_path / 'run' / '20261201_000000' / 'vis_data'
    log.mkdir(parents=True)
    rows = [dict(loss=3.0 - i, time=10.0 + i, data_time=0.5, step=i + 1) for i in range(5)]
    rows.append(dict(lr=0.1, step=5))  # not an iteration
    log.joinpath('scalars.json').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    got = amp_speed.iteration_times(tmp_path / 'run', skip=2)
    assert got['iterations'] == 5 and got['median_iter_s'] == 13.0
    assert got['median_data_s'] == 0.5 and got['losses'] == [1.0, 0.0, -1.0]
    assert amp_speed.iteration_times(tmp_path / 'none', skip=0) == dict(iterations=0)
