"""The shipped DeiT-S recipe with its train pipeline's switch on
(``--cfg-options train_dataloader.dataset.pipeline.0.fast_pipeline=True``), as a user runs it:
their folder outside the checkout, an ImageNet-layout folder of JPEGs large enough for the fast
route to decode at a reduced DCT scale, ``tools/train.py`` for one iteration. A tiny arch keeps
the step cheap; the data pipeline is the recipe's. The switch off (the recipe as shipped) trains
through the CLI in ``test_every_config.py``; a subprocess here costs ~20-40 s of imports."""

import pytest

from .conftest import run_cli, tool, user_config, write_imagenet

pytestmark = pytest.mark.journey

BASE = 'deit/deit-small_8xb128_in1k.py'
BODY = """
tiny = dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
model = dict(backbone=dict(arch=tiny), head=dict(in_channels=32))
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False)
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False)
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(save_best=None))
randomness = dict(seed=0)
"""
SWITCH = 'train_dataloader.dataset.pipeline.0.fast_pipeline'


def test_recipe_trains_with_the_fast_pipeline(tmp_path):
    home = tmp_path / 'user'
    write_imagenet(home / 'data' / 'imagenet', size=(600, 800))  # 600x800 JPEGs
    config = user_config(home, BASE, BODY).name
    args = [tool('train.py'), config, '--work-dir', 'work', '--cfg-options', f'{SWITCH}=True']
    out = run_cli(args, home, 'train_fast').stdout
    assert 'Epoch(train) [1][1/1]' in out and 'loss: ' in out, out[-3000:]
    assert 'fast_pipeline=True' in out, 'the switch in the printed config'
    assert (home / 'work' / 'epoch_1.pth').is_file()
