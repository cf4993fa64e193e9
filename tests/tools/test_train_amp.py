"""tools/train.py --amp: fp16 with dynamic loss scaling on a GPU (mmpretrain's --amp), bf16 autocast
without loss scaling on a CPU-only run (mmengine's AmpOptimWrapper cannot be built there)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmdeit.engine import CPUAmpOptimWrapper
from mmdeit.registry import MODELS, OPTIM_WRAPPERS
from tools import train as train_tool

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / 'configs' / 'digits'
STUDENT = DIGITS / 'deit-digits-tiny-distilled-hard_1xb64_digits.py'
TEACHER = DIGITS / 'resnet-digits_1xb64_digits.py'


def _merged(monkeypatch, device: str, *options: str) -> Config:
    monkeypatch.setattr(train_tool, 'get_device', lambda: device)
    args = train_tool.parse_args([str(STUDENT), '--amp', *options])
    return train_tool.merge_args(Config.fromfile(args.config), args)


def test_amp_on_a_cpu_is_bf16_without_loss_scaling(monkeypatch):
    wrapper = _merged(monkeypatch, 'cpu').optim_wrapper
    assert wrapper.type == 'mmdeit.CPUAmpOptimWrapper' and wrapper.dtype == 'bfloat16'
    assert 'loss_scale' not in wrapper
    assert wrapper.optimizer.type == 'AdamW' and 'paramwise_cfg' in wrapper  # the rest is kept


def test_amp_on_a_gpu_is_fp16_with_dynamic_loss_scaling(monkeypatch):
    wrapper = _merged(monkeypatch, 'cuda').optim_wrapper
    assert wrapper.type == 'AmpOptimWrapper' and wrapper.loss_scale == 'dynamic'
    assert 'dtype' not in wrapper  # autocast's default on a GPU: fp16


def test_help_says_what_amp_does(capsys):
    with pytest.raises(SystemExit):
        train_tool.parse_args(['--help'])
    help_text = ' '.join(capsys.readouterr().out.split())
    assert 'fp16 autocast with dynamic loss scaling' in help_text
    assert 'bf16 autocast without loss scaling' in help_text


@pytest.mark.parametrize('scope', ['mmdeit', 'mmpretrain'])
def test_cpu_amp_optim_wrapper_steps_under_bf16_autocast(scope):
    linear = torch.nn.Linear(4, 2)
    before = linear.weight.detach().clone()
    with DefaultScope.overwrite_default_scope(scope):
        wrapper = OPTIM_WRAPPERS.build(
            dict(
                type='mmdeit.CPUAmpOptimWrapper',
                dtype='bfloat16',
                loss_scale='dynamic',  # what a GPU config may carry: ignored
                optimizer=torch.optim.SGD(linear.parameters(), lr=0.1),
            )
        )
    with wrapper.optim_context(linear):
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16
        out = linear(torch.randn(3, 4))
        assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(linear.weight, before)  # stepped, the loss not scaled away
    assert linear.weight.dtype == torch.float32
    state = wrapper.state_dict()
    assert state['loss_scaler'] == {}
    # A GPU run's checkpoint (with its scaler state) resumes on the CPU.
    state['loss_scaler'] = {'scale': 1024.0, 'growth_factor': 2.0, '_growth_tracker': 3}
    wrapper.load_state_dict(state)
    with pytest.raises(ValueError, match='bfloat16'):
        CPUAmpOptimWrapper(dtype='float16', optimizer=torch.optim.SGD(linear.parameters(), lr=0.1))


@pytest.mark.journey
def test_train_with_amp_on_a_cpu_from_the_users_folder(tmp_path):
    """``python tools/train.py <digits config> --amp`` from a folder outside the checkout, with
    drop path 0.5 on a CPU-only run (CUDA hidden): it trains with bf16 autocast."""
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(str(TEACHER)).model)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 'teacher.pth')
    options = [
        f'model.teacher_ckpt={tmp_path / "teacher.pth"}',
        'model.backbone.drop_path_rate=0.5',
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
        'randomness.seed=0',
        'train_dataloader.dataset.indices=16',
        'val_dataloader.dataset.indices=8',
        'train_dataloader.batch_size=8',
        'val_dataloader.batch_size=8',
    ]
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTEST_CURRENT_TEST')}
    env.update(CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2')
    cmd = [sys.executable, str(REPO / 'tools' / 'train.py'), str(STUDENT), '--amp']
    cmd += ['--work-dir', 'work', '--cfg-options', *options]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    work = tmp_path / 'work'
    log = next(work.glob('*/*.log')).read_text()
    assert 'CPUAmpOptimWrapper: bf16 autocast on the CPU, no loss scaling' in log
    cfg = Config.fromfile(str(next(work.glob('*/vis_data/config.py'))))
    assert cfg.optim_wrapper.type == 'mmdeit.CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.model.backbone.drop_path_rate == 0.5
    scalars = [json.loads(line) for line in next(work.glob('*/vis_data/scalars.json')).open()]
    train_logs = [s for s in scalars if 'loss' in s]
    assert len(train_logs) == 2  # 16 images, batch 8
    for s in train_logs:
        assert all(math.isfinite(s[k]) for k in ('loss', 'loss_cls', 'loss_distill')), s
    assert any('accuracy/top1' in s for s in scalars)
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert ckpt['optimizer']['loss_scaler'] == {}
