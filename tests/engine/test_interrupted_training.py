"""A training run SIGKILLed mid-epoch and resumed with --resume ends with the weights of an
uninterrupted run (deterministic CPU run, same seed)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from mmdeit.engine import safe_load
from tools.train import main as train_main

from ..conftest import make_image_folder

REPO = Path(__file__).resolve().parents[2]
ITERS_PER_EPOCH = 4  # 16 images, batch 4
MAX_EPOCHS = 4

_SLOW_HOOK = textwrap.dedent(
    """
    import time
    from mmengine.hooks import Hook
    from mmdeit.registry import HOOKS

    @HOOKS.register_module(force=True)
    class SlowDownHook(Hook):
        # Gives the test time to kill the run at a known stage; changes no number.
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            time.sleep(0.5)
    """
)


def _write_configs(tmp_path):
    images = make_image_folder(tmp_path / 'images', per_class=8, size=(20, 24))
    tiny = dict(
        default_scope='mmdeit',
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[64.0] * 3),
            backbone=dict(
                type='DistilledVisionTransformer',
                arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
                img_size=16,
                patch_size=8,
            ),
            head=dict(type='DeiTClsHead', num_classes=2, in_channels=32),
        ),
        train_dataloader=dict(
            batch_size=4,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(
                type='CustomDataset',
                data_root=str(images),
                pipeline=[
                    dict(type='LoadImageFromFile'),
                    dict(type='Resize', scale=(16, 16)),
                    dict(type='PackInputs'),
                ],
            ),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=MAX_EPOCHS),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        param_scheduler=[
            dict(
                type='CosineAnnealingLR',
                T_max=MAX_EPOCHS,
                by_epoch=True,
                convert_to_iter_based=True,
            )
        ],
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=2),
        ),
        randomness=dict(seed=0, deterministic=True),
    )
    Config(tiny).dump(str(tmp_path / 'tiny.py'))
    (tmp_path / 'slow_hook.py').write_text(_SLOW_HOOK)
    (tmp_path / 'slow.py').write_text(
        "_base_ = './tiny.py'\n"
        "custom_imports = dict(imports=['slow_hook'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='SlowDownHook')]\n"
    )
    return str(tmp_path / 'tiny.py'), str(tmp_path / 'slow.py')


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the subprocess (OMP_NUM_THREADS=1): identical float sums."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _named(name):
    # mmengine shares the logger and MessageHub of runners with the same name (same second).
    return ['--cfg-options', f'experiment_name={name}']


def _wait_for(predicate, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path, one_thread):
    tiny, slow = _write_configs(tmp_path)
    killed_dir, reference_dir = tmp_path / 'killed', tmp_path / 'reference'
    stdout = tmp_path / 'killed.out'
    env = dict(
        os.environ,
        OMP_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
        PYTHONUNBUFFERED='1',
        PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), os.environ.get('PYTHONPATH', '')]),
    )
    with open(stdout, 'w') as out:
        proc = subprocess.Popen(
            [sys.executable, 'tools/train.py', slow, '--work-dir', str(killed_dir)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        # The uninterrupted reference runs here while the subprocess imports.
        train_main([tiny, '--work-dir', str(reference_dir), *_named('reference')])
        # Kill once epoch 2 is checkpointed and epoch 3 has started (1 of its 4 iterations).
        started = f'Epoch(train) [3][1/{ITERS_PER_EPOCH}]'
        reached = _wait_for(lambda: started in stdout.read_text(), proc, timeout=300)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    output = stdout.read_text()
    assert reached and proc.returncode == -signal.SIGKILL, output[-3000:]
    assert f'Epoch(train) [3][{ITERS_PER_EPOCH}/{ITERS_PER_EPOCH}]' not in output  # mid-epoch
    assert not (killed_dir / f'epoch_{MAX_EPOCHS}.pth').exists()
    assert (killed_dir / 'last_checkpoint').read_text().endswith('epoch_2.pth')

    train_main([tiny, '--work-dir', str(killed_dir), '--resume', *_named('resumed')])

    logs = [p.read_text() for p in killed_dir.glob('*/*.log')]
    resumed_log = [log for log in logs if 'Auto resumed from the latest checkpoint' in log]
    assert len(resumed_log) == 1, 'the resumed run does not log its resume'
    resumed_log = resumed_log[0]
    assert f'resumed epoch: 2, iter: {2 * ITERS_PER_EPOCH}' in resumed_log
    # It trained epochs 3 and 4 only (a run from scratch would end with the same weights).
    assert 'Epoch(train) [1][' not in resumed_log and 'Epoch(train) [2][' not in resumed_log
    assert f'Epoch(train) [3][1/{ITERS_PER_EPOCH}]' in resumed_log
    final = f'epoch_{MAX_EPOCHS}.pth'
    resumed, reference = (safe_load(str(d / final)) for d in (killed_dir, reference_dir))
    assert resumed['meta']['iter'] == reference['meta']['iter'] == MAX_EPOCHS * ITERS_PER_EPOCH
    assert resumed['state_dict'].keys() == reference['state_dict'].keys()
    for name, value in reference['state_dict'].items():
        assert torch.equal(resumed['state_dict'][name], value), name
