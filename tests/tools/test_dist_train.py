"""tools/dist_train.sh: 2 CPU processes (torchrun, gloo) train the soft-distilled digits config as
one process with the same global batch does; the teacher is replicated, not wrapped in DDP; the
validation metric is computed over the samples of both ranks."""

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from mmdeit.engine import safe_load
from mmdeit.registry import MODELS
from tools.train import main as train_main

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / 'configs' / 'digits'
NUM_TRAIN, NUM_VAL, BATCH_PER_RANK = 32, 40, 8

pytestmark = pytest.mark.skipif(
    not (DIGITS / 'deit-digits-tiny-distilled-soft_1xb64_digits.py').is_file(),
    reason='the digits configs are not there',
)

# Each rank writes what it sees of the model before training, and the metrics after validation.
_PROBE = textwrap.dedent(
    """
    import json
    import os.path as osp

    from mmengine.dist import get_rank
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    from mmdeit.registry import HOOKS


    @HOOKS.register_module(force=True)
    class DistProbeHook(Hook):
        def _dump(self, runner, name, info):
            with open(osp.join(runner.work_dir, f'{name}_rank{get_rank()}.json'), 'w') as f:
                json.dump(info, f)

        def before_train(self, runner):
            model = runner.model
            student = model.module if is_model_wrapper(model) else model
            teacher = student.teacher
            wrapped = {id(p) for p in model.parameters()}
            self._dump(runner, 'probe', dict(
                world_size=runner.world_size,
                wrapper=type(model).__name__,
                teacher_type=type(teacher).__name__,
                teacher_in_wrapper=any(id(p) in wrapped for p in teacher.parameters()),
                teacher_in_modules=any(m is teacher for m in model.modules()),
                teacher_trainable=any(p.requires_grad for p in teacher.parameters()),
                teacher_training=teacher.training,
                teacher_sum=float(sum(v.double().sum() for v in teacher.state_dict().values())),
            ))

        def after_val_epoch(self, runner, metrics=None):
            self._dump(runner, 'metrics', dict(metrics))
    """
)


def _write_configs(tmp_path, teacher_ckpt):
    # Deterministic: no augmentation (no crop/rotate, no Mixup/CutMix), no drop path, no
    # shuffling. DefaultSampler gives rank r the samples r, r+2, ..., so the 2 x 8 batches of
    # an iteration are the 16 samples of the single process's batch.
    (tmp_path / 'dist.py').write_text(
        textwrap.dedent(
            f"""
            _base_ = '{DIGITS}/deit-digits-tiny-distilled-soft_1xb64_digits.py'
            custom_imports = dict(imports=['dist_probe'], allow_failed_imports=False)
            custom_hooks = [dict(type='DistProbeHook')]
            model = dict(
                backbone=dict(drop_path_rate=0.0), train_cfg=None, teacher_ckpt='{teacher_ckpt}'
            )
            pipeline = [
                dict(type='Resize', scale=(16, 16), interpolation='bicubic', backend='pillow'),
                dict(type='PackInputs'),
            ]
            train_dataloader = dict(
                batch_size={BATCH_PER_RANK}, num_workers=0, persistent_workers=False,
                sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=dict(indices={NUM_TRAIN}, pipeline=pipeline),
            )
            val_dataloader = dict(
                batch_size=16, num_workers=0, persistent_workers=False,
                dataset=dict(indices={NUM_VAL}),
            )
            test_dataloader = val_dataloader
            val_evaluator = [
                dict(type='Accuracy', topk=(1,)),
                dict(type='DumpResults', out_file_path='{tmp_path}/dist_preds.pkl'),
            ]
            train_cfg = dict(max_epochs=1)
            default_hooks = dict(logger=dict(interval=1))
            """
        )
    )
    (tmp_path / 'single.py').write_text(
        textwrap.dedent(
            f"""
            _base_ = './dist.py'
            train_dataloader = dict(batch_size={2 * BATCH_PER_RANK})
            val_evaluator = [dict(type='Accuracy', topk=(1,))]
            """
        )
    )
    (tmp_path / 'dist_probe.py').write_text(_PROBE)
    return str(tmp_path / 'dist.py'), str(tmp_path / 'single.py')


def _teacher_checkpoint(path):
    init_default_scope('mmdeit')
    teacher = MODELS.build(Config.fromfile(str(DIGITS / 'resnet-digits_1xb64_digits.py')).model)
    teacher.init_weights()
    torch.save({'state_dict': teacher.state_dict()}, path)
    return float(sum(v.double().sum() for v in teacher.state_dict().values()))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine: 2 threads here would fight the 2 ranks
    yield
    torch.set_num_threads(threads)


def _json(path):
    return json.loads(Path(path).read_text())


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(
    tmp_path, monkeypatch, one_thread
):
    teacher_sum = _teacher_checkpoint(tmp_path / 'teacher.pth')
    dist_cfg, single_cfg = _write_configs(tmp_path, tmp_path / 'teacher.pth')
    dist_dir, single_dir = tmp_path / 'dist', tmp_path / 'single'
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')]),
        PORT=str(_free_port()),
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get('PYTHONPATH', '')]),
        OMP_NUM_THREADS='1',
    )
    command = ['bash', 'tools/dist_train.sh', dist_cfg, '2', '--work-dir', str(dist_dir)]
    command += ['--cfg-options', 'env_cfg.dist_cfg.backend=gloo']
    with open(tmp_path / 'dist.out', 'w') as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # The single-process reference runs here while the two ranks import.
        monkeypatch.syspath_prepend(str(tmp_path))
        train_main([single_cfg, '--work-dir', str(single_dir)])
        proc.wait(timeout=540)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    output = (tmp_path / 'dist.out').read_text()
    assert proc.returncode == 0, output[-5000:]
    assert '`broadcast_buffers` is deprecated' not in output, output[-5000:]  # its successor used

    # The teacher: one full, identical, frozen copy per rank, outside DDP.
    for rank in (0, 1):
        probe = _json(dist_dir / f'probe_rank{rank}.json')
        assert probe['world_size'] == 2 and probe['wrapper'] == 'MMDistributedDataParallel'
        assert probe['teacher_type'] == 'ImageClassifier'
        assert not probe['teacher_in_wrapper'] and not probe['teacher_in_modules']
        assert not probe['teacher_trainable'] and not probe['teacher_training']
        assert probe['teacher_sum'] == teacher_sum
    assert _json(single_dir / 'probe_rank0.json')['world_size'] == 1

    # The metric covers the val samples of both ranks, and every rank reports it.
    with open(tmp_path / 'dist_preds.pkl', 'rb') as f:
        preds = pickle.load(f)  # written by this test's run
    assert sorted(p['sample_idx'] for p in preds) == list(range(NUM_VAL))
    correct = sum(int(p['pred_label'].item() == p['gt_label'].item()) for p in preds)
    metrics = [_json(dist_dir / f'metrics_rank{rank}.json') for rank in (0, 1)]
    assert metrics[0] == metrics[1]
    assert metrics[0]['accuracy/top1'] == pytest.approx(100.0 * correct / NUM_VAL)
    assert metrics[0] == _json(single_dir / 'metrics_rank0.json')

    # The weights after 2 iterations of a global batch of 16: those of the single process (the
    # two AdamW steps move a weight by up to ~1.3e-4; the runs differ by float rounding, <1e-6).
    dist_ckpt, single_ckpt = (safe_load(str(d / 'epoch_1.pth')) for d in (dist_dir, single_dir))
    iters = NUM_TRAIN // (2 * BATCH_PER_RANK)
    assert dist_ckpt['meta']['iter'] == single_ckpt['meta']['iter'] == iters
    assert dist_ckpt['state_dict'].keys() == single_ckpt['state_dict'].keys()
    assert not any(k.startswith(('teacher', 'module.')) for k in dist_ckpt['state_dict'])
    for name, value in single_ckpt['state_dict'].items():
        torch.testing.assert_close(dist_ckpt['state_dict'][name], value, atol=5e-6, rtol=0)
