"""The safe checkpoint loader: mmengine checkpoints load on torch >= 2.6, code never runs."""

import os
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint

from mmdeit.engine import (
    UnsafeCheckpointError,
    load_checkpoint_file,
    safe_load,
    safe_load_checkpoint,
)
from mmdeit.models.backbones import DistilledVisionTransformer

from ..conftest import TINY_ARCH


def _runner_cfg(image_folder, work_dir, max_iters, **kwargs):
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    return dict(
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[64.0] * 3),
            backbone=dict(
                type='DistilledVisionTransformer',
                arch=TINY_ARCH,
                img_size=32,
                patch_size=8,
                out_type='avg_featmap',
            ),
            head=dict(
                type='LinearClsHead',
                num_classes=2,
                in_channels=32,
                loss=dict(type='CrossEntropyLoss'),
            ),
        ),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(type='CustomDataset', data_root=str(image_folder), pipeline=pipeline),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=1),
        ),
        randomness=dict(seed=0, deterministic=True),
        default_scope='mmdeit',
        **kwargs,
    )


def test_runner_checkpoint_resumes_with_weights_only(image_folder, tmp_path, stock_mmengine):
    """A config naming AtomicCheckpointHook resumes, on stock mmengine: building the hook turns
    the safe loader on before the Runner's load_or_resume."""
    full = Runner.from_cfg(_runner_cfg(image_folder, tmp_path / 'full', 4))
    full.train()
    ckpt = tmp_path / 'full' / 'iter_2.pth'
    assert ckpt.is_file()
    saved = safe_load(str(ckpt))
    assert saved['meta']['iter'] == 2 and 'message_hub' in saved and 'optimizer' in saved

    stock_mmengine()
    with pytest.raises(pickle.UnpicklingError):  # why: torch >= 2.6 refuses it in stock mmengine
        CheckpointLoader.load_checkpoint(str(ckpt))
    resumed = Runner.from_cfg(
        _runner_cfg(image_folder, tmp_path / 'resumed', 4, resume=True, load_from=str(ckpt))
    )
    resumed.train()
    assert resumed.iter == 4
    steps = {int(s['step']) for s in resumed.optim_wrapper.optimizer.state_dict()['state'].values()}
    assert steps == {4}  # 2 restored optimizer steps + 2 new ones
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_load_checkpoint_goes_through_safe_loader(tmp_path, engine):
    model = DistilledVisionTransformer(arch=TINY_ARCH, img_size=32, patch_size=8)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {'epoch': 1}}, tmp_path / 'm.pth')
    other = DistilledVisionTransformer(arch=TINY_ARCH, img_size=32, patch_size=8)
    load_checkpoint(other, str(tmp_path / 'm.pth'), strict=True)
    torch.testing.assert_close(other.pos_embed, model.pos_embed)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def _evil(tmp_path):
    exploit = _Exploit()
    exploit.marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': exploit}, path)
    return str(path), exploit.marker


def test_pickle_that_runs_code_is_refused(tmp_path, engine):
    path, marker = _evil(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match='allow-list'):
        safe_load(path)
    with pytest.raises(UnsafeCheckpointError, match='allow-list'):
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def test_safe_readers_work_on_stock_mmengine(tmp_path, stock_mmengine):
    """load_checkpoint_file and safe_load_checkpoint read local files safely, set up or not."""
    linear = torch.nn.Linear(2, 2)
    buffer = HistoryBuffer()
    buffer.update(0.5)  # held as a numpy array
    path = str(tmp_path / 'runner-like.pth')
    state = {f'module.{k}': v for k, v in linear.state_dict().items()}  # saved from DDP
    torch.save({'state_dict': state, 'message_hub': {'loss': buffer}}, path)
    with pytest.raises(pickle.UnpicklingError):  # stock mmengine on torch >= 2.6
        CheckpointLoader.load_checkpoint(path)

    assert load_checkpoint_file(path)['message_hub']['loss'].current() == 0.5
    other = torch.nn.Linear(2, 2)
    ckpt = safe_load_checkpoint(other, path, map_location='cpu', strict=True)
    assert 'message_hub' in ckpt
    torch.testing.assert_close(other.weight, linear.weight)

    evil, marker = _evil(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match='allow-list'):
        load_checkpoint_file(evil)
    with pytest.raises(UnsafeCheckpointError, match='allow-list'):
        safe_load_checkpoint(other, evil)
    assert not marker.exists()


def test_truncated_checkpoint_gives_clear_error(tmp_path):
    path = tmp_path / 'ok.pth'
    torch.save({'state_dict': torch.nn.Linear(64, 64).state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match='truncated'):
        safe_load(str(tmp_path / 'cut.pth'))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        safe_load(str(tmp_path / 'missing.pth'))
