"""``import mmdeit`` leaves mmengine as it is; mmdeit's tools and configs turn the engine on."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.runner.checkpoint import CheckpointLoader

from mmdeit.engine import (
    AtomicLocalBackend,
    UnsafeCheckpointError,
    engine_is_set_up,
    safe_load,
    setup_engine,
)
from tools import digits_study
from tools import test as test_tool
from tools import train as train_tool

from ..conftest import make_image_folder

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    str(p.relative_to(REPO))
    for folder in ('deit', 'digits')
    for p in (REPO / 'configs' / folder).glob('*.py')
)

# An mmdet run (mmdet's registries, default scope mmdet) that imports mmdeit for its backbone,
# as custom_imports=dict(imports=['mmdeit']) does; prints what it finds as JSON.
_PROBE = textwrap.dedent(
    """
    import json
    from mmengine.fileio import LocalBackend, get_file_backend
    from mmengine.fileio import io as fileio_io
    from mmengine.fileio.backends import registry_utils
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import HOOKS, DefaultScope
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local
    from mmdet.registry import HOOKS as MMDET_HOOKS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)

    def state():
        return [
            dict(CheckpointLoader._schemes),
            dict(registry_utils.backends),
            dict(registry_utils.prefix_to_backends),
            dict(fileio_io.backend_instances),
            dict(HOOKS.module_dict),
            dict(MMDET_HOOKS.module_dict),
        ]

    before = state()
    import mmdeit
    checks = dict(
        unchanged=state() == before,
        local_loader=CheckpointLoader._schemes[''] is load_from_local,
        local_backend=type(get_file_backend('work_dirs/x/iter_2.pth')) is LocalBackend,
        mmengine_hook=HOOKS.get('CheckpointHook') is CheckpointHook,
        mmdet_hook=type(MMDET_HOOKS.build(dict(type='CheckpointHook'))) is CheckpointHook,
    )
    with DefaultScope.overwrite_default_scope('mmdeit'):
        checks['mmdeit_hook'] = type(HOOKS.build(dict(type='CheckpointHook'))) is CheckpointHook
    from mmdeit.engine import engine_is_set_up
    checks['not_set_up'] = not engine_is_set_up()
    # An mmdet config that names mmdeit's hook gets the engine.
    hook = MMDET_HOOKS.build(dict(type='mmdeit.AtomicCheckpointHook', interval=1))
    checks['named_hook'] = type(hook).__name__ == 'AtomicCheckpointHook'
    checks['named_hook_sets_up'] = engine_is_set_up()
    print('PROBE', json.dumps(checks))
    """
)


def test_import_mmdeit_leaves_mmengine_unchanged_in_an_mmdet_run():
    pytest.importorskip('mmdet')
    proc = subprocess.run(
        [sys.executable, '-c', _PROBE], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('PROBE ')]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    checks = json.loads(lines[-1][len('PROBE ') :])
    assert checks == {key: True for key in checks} and len(checks) == 9, checks


def test_setup_engine_turns_both_on_and_is_idempotent(stock_mmengine, tmp_path):
    assert type(get_file_backend(str(tmp_path / 'a.pth'))) is LocalBackend
    setup_engine()
    setup_engine()
    assert engine_is_set_up()
    assert isinstance(get_file_backend(str(tmp_path / 'a.pth')), AtomicLocalBackend)
    assert list(CheckpointLoader._schemes).count('') == 1


@pytest.mark.parametrize('config', CONFIGS)
def test_shipped_configs_name_the_atomic_hook_and_the_nan_guard(config):
    cfg = Config.fromfile(str(REPO / config))
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    assert 'NanGuardHook' in [hook['type'] for hook in cfg.custom_hooks]


def _tiny_config(tmp_path, max_iters):
    """A config with mmengine's plain CheckpointHook: only the tool can turn the engine on."""
    images = make_image_folder(tmp_path / 'images', per_class=2, size=(16, 16))
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
    cfg = dict(
        default_scope='mmdeit',
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[64.0] * 3),
            backbone=dict(
                type='DistilledVisionTransformer',
                arch=dict(embed_dims=16, num_layers=1, num_heads=2, feedforward_channels=32),
                img_size=16,
                patch_size=8,
            ),
            head=dict(type='DeiTClsHead', num_classes=2, in_channels=16),
        ),
        train_dataloader=dict(
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(type='CustomDataset', data_root=str(images), pipeline=pipeline),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        randomness=dict(seed=0),
    )
    path = str(tmp_path / 'tiny.py')
    Config(cfg).dump(path)
    return path


def test_tools_train_resumes_and_refuses_code_on_stock_mmengine(tmp_path, stock_mmengine):
    config = _tiny_config(tmp_path, max_iters=2)

    def train(work_dir, *args, options=()):
        # mmengine shares the MessageHub of runners with the same name (same second).
        name = f'experiment_name={tmp_path.name}_{work_dir}'
        args = [config, '--work-dir', str(tmp_path / work_dir), *args]
        train_tool.main([*args, '--cfg-options', name, *options])

    train('first')
    ckpt = tmp_path / 'first' / 'iter_2.pth'
    assert safe_load(str(ckpt))['meta']['iter'] == 2

    stock_mmengine()
    train('resumed', '--resume', str(ckpt), options=['train_cfg.max_iters=3'])
    # Resumed at iteration 2: a run from scratch would have saved iter_2.pth as well.
    assert sorted(p.name for p in (tmp_path / 'resumed').glob('*.pth')) == ['iter_3.pth']
    assert safe_load(str(tmp_path / 'resumed' / 'iter_3.pth'))['meta']['iter'] == 3

    stock_mmengine()
    torch.save({'state_dict': {}, 'meta': SimpleNamespace()}, tmp_path / 'evil.pth')
    with pytest.raises(UnsafeCheckpointError, match='allow-list'):
        train('evil', '--resume', str(tmp_path / 'evil.pth'))


class _RunnerBuilt(Exception):
    pass


def _spy_runner(monkeypatch, module, seen):
    def from_cfg(cfg):
        seen.append(engine_is_set_up())
        raise _RunnerBuilt

    monkeypatch.setattr(module, 'Runner', SimpleNamespace(from_cfg=from_cfg))


def test_tools_test_and_demo_turn_the_engine_on_before_the_runner(
    tmp_path, stock_mmengine, monkeypatch
):
    seen = []
    config = _tiny_config(tmp_path, max_iters=1)
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {}}, ckpt)
    _spy_runner(monkeypatch, test_tool, seen)
    with pytest.raises(_RunnerBuilt):
        test_tool.main([config, str(ckpt), '--work-dir', str(tmp_path / 'test')])

    # The demo (one point of the digits study) trains each run with its own Runner.
    def from_cfg(cfg):
        seen.append(engine_is_set_up())
        raise _RunnerBuilt

    monkeypatch.setattr(digits_study_runner(), 'from_cfg', from_cfg)
    args = digits_study.parse_args(['--work-dir', str(tmp_path / 'demo')])
    stock_mmengine()
    with pytest.raises(_RunnerBuilt):
        digits_study.train_one('none', 'mild', 0.1, 0, args)
    assert seen == [True, True]


def digits_study_runner():
    """The Runner class tools/digits_study.py builds its runs with (imported in the run)."""
    from mmengine.runner import Runner

    return Runner
