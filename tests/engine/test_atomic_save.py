"""Checkpoint writes are atomic: a run killed while it saves keeps a loadable latest checkpoint."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from mmengine.fileio import get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import DefaultScope
from mmengine.runner import Runner, save_checkpoint

import mmdeit.engine.atomic_file_backend as atomic_module
from mmdeit.engine import (
    AtomicCheckpointHook,
    AtomicLocalBackend,
    atomic_write,
    engine_is_set_up,
    safe_load,
)

from ..conftest import TINY_ARCH

REPO = Path(__file__).resolve().parents[2]


def _tmp_leftovers(folder):
    return sorted(p.name for p in Path(folder).glob('.*.tmp'))


def test_local_paths_use_the_atomic_backend(tmp_path, engine):
    assert isinstance(get_file_backend(str(tmp_path / 'a.pth')), AtomicLocalBackend)
    assert isinstance(get_file_backend(backend_args=dict(backend='local')), AtomicLocalBackend)


def test_atomic_write_bytes_text_and_mode(tmp_path):
    target = tmp_path / 'sub' / 'f.txt'
    atomic_write('héllo', target)
    assert target.read_text(encoding='utf-8') == 'héllo'
    atomic_write(b'\x00\x01', target)
    assert target.read_bytes() == b'\x00\x01'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as open() would create it
    assert _tmp_leftovers(target.parent) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch, engine):
    target = tmp_path / 'ckpt.pth'
    target.write_bytes(b'old complete checkpoint')

    def crash(fd):
        raise OSError('disk full')

    monkeypatch.setattr(atomic_module.os, 'fsync', crash)
    with pytest.raises(OSError, match='disk full'):
        get_file_backend(str(target)).put(b'new half-written', str(target))
    assert target.read_bytes() == b'old complete checkpoint'
    assert _tmp_leftovers(tmp_path) == []


def test_mmengine_save_checkpoint_goes_through_os_replace(tmp_path, monkeypatch, engine):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(atomic_module.os, 'replace', spy)
    save_checkpoint({'state_dict': torch.nn.Linear(2, 2).state_dict()}, str(tmp_path / 'a.pth'))
    assert len(replaced) == 1 and replaced[0][1] == 'a.pth' and replaced[0][0].startswith('.a.pth')
    assert set(safe_load(str(tmp_path / 'a.pth'))['state_dict']) == {'weight', 'bias'}


# A writer that saves a checkpoint twice as mmengine's save_checkpoint does (torch.save to
# bytes, then the file backend's put); during the second write, once the new data is in its
# temporary file, it signals and stalls, to be SIGKILLed there. It loads the backend module by
# path and skips mmengine.runner: importing the mmdeit package would cost ~15 s.
_WRITER = textwrap.dedent(
    """
    import importlib.util, io, os, stat, sys, time
    import torch
    from mmengine.fileio import get_file_backend
    spec = importlib.util.spec_from_file_location('afb', sys.argv[1])
    afb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(afb)
    afb.register_atomic_local_backend()
    target, marker = sys.argv[2], sys.argv[3]
    real_fsync = os.fsync
    calls = []
    def stalling_fsync(fd):
        real_fsync(fd)
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a file, not the folder
            calls.append(fd)
        if len(calls) == 2:  # the second checkpoint is fully in its temp file
            open(marker, 'w').close()
            time.sleep(120)
    afb.os.fsync = stalling_fsync
    for step in (1, 2):
        buffer = io.BytesIO()
        torch.save({'meta': {'step': step}, 'w': torch.full((512, 1024), step)}, buffer)
        get_file_backend(target).put(buffer.getvalue(), target)
    """
)


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    target, marker = tmp_path / 'latest.pth', tmp_path / 'stalled'
    module = REPO / 'mmdeit' / 'engine' / 'atomic_file_backend.py'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(
        [sys.executable, '-c', _WRITER, str(module), str(target), str(marker)], env=env
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f'the writer did not reach the second save (rc={proc.poll()})'
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ckpt = safe_load(str(target))  # complete, and still the first checkpoint
    assert ckpt['meta']['step'] == 1 and bool((ckpt['w'] == 1).all())
    assert len(_tmp_leftovers(tmp_path)) == 1  # the killed write's temp file, never the target


def _runner(image_folder, work_dir, max_iters, **ckpt_kwargs):
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    model = dict(
        type='ImageClassifier',
        data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[64.0] * 3),
        backbone=dict(type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=32, patch_size=8),
        head=dict(type='DeiTClsHead', num_classes=2, in_channels=32),
    )
    return Runner.from_cfg(
        dict(
            model=model,
            work_dir=str(work_dir),
            train_dataloader=dict(
                batch_size=2,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=dict(type='CustomDataset', data_root=str(image_folder), pipeline=pipeline),
            ),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            default_hooks=dict(
                checkpoint=dict(
                    type='AtomicCheckpointHook', by_epoch=False, interval=1, **ckpt_kwargs
                )
            ),
            randomness=dict(seed=0),
            default_scope='mmdeit',
            # mmengine shares the MessageHub of runners with the same name (same second).
            experiment_name=Path(work_dir).parent.name,
        )
    )


def test_atomic_checkpoint_hook_is_named_and_turns_the_engine_on(stock_mmengine, tmp_path):
    with DefaultScope.overwrite_default_scope('mmdeit'):
        plain = MMENGINE_HOOKS.build(dict(type='CheckpointHook', interval=1))
        assert type(plain) is CheckpointHook  # mmengine's, also in the mmdeit scope
        assert not engine_is_set_up()
        hook = MMENGINE_HOOKS.build(dict(type='AtomicCheckpointHook', interval=1))
    assert isinstance(hook, AtomicCheckpointHook) and isinstance(hook, CheckpointHook)
    assert engine_is_set_up()
    assert isinstance(get_file_backend(str(tmp_path / 'a.pth')), AtomicLocalBackend)


class _Killed(Exception):
    pass


def test_kill_while_saving_keeps_the_last_checkpoint_with_max_keep_1(
    image_folder, tmp_path, monkeypatch
):
    """mmengine removes the old checkpoint before it writes the new one; ours after."""
    work_dir = tmp_path / 'work'
    runner = _runner(image_folder, work_dir, max_iters=3, max_keep_ckpts=1)
    real_put = AtomicLocalBackend.put

    def put(self, obj, filepath):
        if str(filepath).endswith('iter_2.pth'):
            raise _Killed('killed while saving iter_2.pth')
        real_put(self, obj, filepath)

    monkeypatch.setattr(AtomicLocalBackend, 'put', put)
    with pytest.raises(_Killed):
        runner.train()
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_1.pth']
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_1.pth')
    assert safe_load(str(work_dir / 'iter_1.pth'))['meta']['iter'] == 1
    assert _tmp_leftovers(work_dir) == []


def test_old_checkpoints_are_removed_after_the_new_one_is_saved(image_folder, tmp_path):
    work_dir = tmp_path / 'work'
    (work_dir).mkdir()
    (work_dir / '.iter_7.pth.abc123.tmp').write_bytes(b'left by a killed write')
    _runner(image_folder, work_dir, max_iters=3, max_keep_ckpts=2).train()
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['iter_2.pth', 'iter_3.pth']
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_3.pth')
    assert _tmp_leftovers(work_dir) == []  # removed before the run


def test_kill_between_writing_and_removing_best_leaves_a_loadable_best(
    image_folder, tmp_path, monkeypatch
):
    """mmengine removes the previous best before it writes the new one; ours after."""
    work_dir = tmp_path / 'work'
    runner = _runner(image_folder, work_dir, max_iters=3, save_best='acc', rule='greater')
    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    hook.before_train(runner)
    hook._save_best_checkpoint(runner, {'acc': 50.0})
    assert [p.name for p in work_dir.glob('best_*.pth')] == ['best_acc_iter_0.pth']

    def killed(self, filepath):
        raise _Killed(f'killed before removing {filepath}')

    runner.train_loop._iter = 1
    with monkeypatch.context() as patch:
        patch.setattr(AtomicLocalBackend, 'remove', killed)
        with pytest.raises(_Killed, match='best_acc_iter_0.pth'):
            hook._save_best_checkpoint(runner, {'acc': 70.0})
    # The new best is complete; the old one was not removed yet.
    assert safe_load(str(work_dir / 'best_acc_iter_1.pth'))['meta']['iter'] == 1
    assert (work_dir / 'best_acc_iter_0.pth').is_file()
    assert runner.message_hub.get_info('best_ckpt') == str(work_dir / 'best_acc_iter_1.pth')

    runner.train_loop._iter = 2
    hook._save_best_checkpoint(runner, {'acc': 90.0})  # removes the previous best (iter 1)
    assert not (work_dir / 'best_acc_iter_1.pth').exists()
    assert safe_load(str(work_dir / 'best_acc_iter_2.pth'))['meta']['iter'] == 2
    assert _tmp_leftovers(work_dir) == []
