"""NanGuardHook: a NaN/inf loss stops training and the last good checkpoint stays the latest."""

import math
from pathlib import Path

import pytest
import torch
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

from mmdeit.engine import NanGuardHook, safe_load

from ..conftest import TINY_ARCH

BAD_ITER = 5  # 1-based, as mmengine logs iterations


def _runner(image_folder, work_dir, max_iters=8):
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    return Runner.from_cfg(
        dict(
            model=dict(
                type='ImageClassifier',
                data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[64.0] * 3),
                backbone=dict(
                    type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=32, patch_size=8
                ),
                head=dict(type='DeiTClsHead', num_classes=2, in_channels=32),
            ),
            work_dir=str(work_dir),
            train_dataloader=dict(
                batch_size=2,
                num_workers=0,
                sampler=dict(type='DefaultSampler', shuffle=True),
                dataset=dict(type='CustomDataset', data_root=str(image_folder), pipeline=pipeline),
            ),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            # Every iteration is checkpointed: without the guard the broken one would be too.
            default_hooks=dict(
                checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=1)
            ),
            custom_hooks=[dict(type='NanGuardHook')],
            randomness=dict(seed=0),
            default_scope='mmdeit',
            # mmengine shares the MessageHub of runners with the same name (same second).
            experiment_name=Path(work_dir).parent.name,
        )
    )


def _poison_loss_at(runner, iteration, value):
    """Make the head's ``loss_cls`` ``value`` at the given 1-based iteration (and after)."""
    head = runner.model.head
    real_loss = head.loss
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        losses = real_loss(*args, **kwargs)
        if len(calls) >= iteration:
            losses['loss_cls'] = losses['loss_cls'] * value
        return losses

    head.loss = loss


@pytest.mark.parametrize('value', [math.nan, math.inf])
def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    image_folder, tmp_path, value
):
    work_dir = tmp_path / 'work'
    runner = _runner(image_folder, work_dir)
    _poison_loss_at(runner, BAD_ITER, value)
    with pytest.raises(FloatingPointError) as excinfo:
        runner.train()
    message = str(excinfo.value)
    good = work_dir / f'iter_{BAD_ITER - 1}.pth'
    assert f'iteration {BAD_ITER} ' in message
    assert f'loss_cls={value}' in message and 'loss=' in message
    assert str(good) in message and '--resume' in message

    # The broken iteration was not checkpointed; the pointer --resume reads names the good one.
    assert sorted(p.name for p in work_dir.glob('iter_*.pth')) == [
        f'iter_{i}.pth' for i in range(1, BAD_ITER)
    ]
    assert (work_dir / 'last_checkpoint').read_text() == str(good)
    state = safe_load(str(good))['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values())
    # ... while the weights in memory were broken by the optimizer step on the bad loss.
    assert not all(torch.isfinite(p).all() for p in runner.model.parameters())
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'NanGuardHook: non-finite loss' in log


def test_finite_training_is_untouched(image_folder, tmp_path):
    runner = _runner(image_folder, tmp_path / 'work', max_iters=2)
    runner.train()
    assert runner.iter == 2


def test_outputs_without_losses_are_ignored():
    hook = NanGuardHook()
    assert hook._bad_losses(None) == {}
    assert hook._bad_losses({'accuracy': math.nan, 'loss': torch.tensor(1.0)}) == {}
    bad = hook._bad_losses(
        {'loss': torch.tensor(math.nan), 'loss_x': torch.tensor([1.0, math.inf])}
    )
    assert bad == {'loss': 'nan', 'loss_x': 'tensor(2,)'}
    assert NanGuardHook(loss_keys=['loss_x'])._bad_losses({'loss': math.nan}) == {}


def test_registered_in_mmdeit_scope_and_bad_arguments():
    with DefaultScope.overwrite_default_scope('mmdeit'):
        assert isinstance(MMENGINE_HOOKS.build(dict(type='NanGuardHook')), NanGuardHook)
    with pytest.raises(TypeError, match='loss_keys'):
        NanGuardHook(loss_keys='loss')
    with pytest.raises(TypeError, match='loss_keys'):
        NanGuardHook(loss_keys=[1])
