"""tools/analysis/gpu_check.py without running it: its arguments, the commands it would run, the
data and config it writes, how it reads a training log.

The CPU dry run (``--device cpu --quick``) starts three subprocesses (benchmark, train, pytest),
over a minute on the 2-core test machine, so it is not run here.
"""

import json
import math

import pytest

from tools.analysis import benchmark, gpu_check


def test_defaults_are_the_gpu_check(monkeypatch):
    monkeypatch.setenv('OUT', '/some/out')
    args = gpu_check.parse_args([])
    assert args.device == 'cuda' and args.out == '/some/out'
    assert (args.iters, args.batch, args.images) == (50, 128, 1280)
    assert args.steps == list(gpu_check.STEPS)
    monkeypatch.delenv('OUT')
    assert gpu_check.parse_args([]).out == 'work_dirs/gpu_check'


def test_quick_is_tiny():
    args = gpu_check.parse_args(['--device', 'cpu', '--quick', '--steps', 'train'])
    assert (args.iters, args.batch, args.images) == (2, 2, 4) and args.steps == ['train']


@pytest.mark.parametrize(
    'argv, match',
    [
        (['--iters', '0'], '--iters must be >= 1'),
        (['--batch', '4', '--images', '2'], r'--images \(2\) must be >= --batch \(4\)'),
        (['--step-timeout', '0'], '--step-timeout must be >= 1'),
    ],
)
def test_bad_values_name_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        gpu_check.parse_args(argv)


@pytest.mark.parametrize('quick', [False, True])
def test_the_benchmark_commands_parse(tmp_path, quick):
    """bf16 with flash attention only and the profile at batch 8, bf16 at large batches, then
    fp32; every flag is the tool's; the CUDA-graph peer only where there is CUDA."""
    args = gpu_check.parse_args(['--device', 'cpu'] + ['--quick'] * quick)
    small, large, fp32 = gpu_check.bench_commands(args, tmp_path)
    parsed = benchmark.parse_args(small[2:])  # after the interpreter and the script
    assert parsed.dtype == ['bf16'] and parsed.sdpa == 'flash' and parsed.profile
    assert parsed.out == str(tmp_path / 'benchmark_bf16.json')
    assert bool(parsed.memory_archs) is not quick and parsed.compile == []
    parsed_large = benchmark.parse_args(large[2:])
    assert parsed_large.dtype == ['bf16'] and parsed_large.infer_batch > parsed.infer_batch
    assert parsed_large.out == str(tmp_path / 'benchmark_bf16_large.json')
    assert benchmark.parse_args(fp32[2:]).dtype == ['fp32']
    cuda = gpu_check.bench_commands(gpu_check.parse_args([]), tmp_path)
    assert all(c[c.index('--device') + 1] == 'cuda' and 'deit-small' in c for c in cuda)
    modes = cuda[0][cuda[0].index('--compile') + 1 : cuda[0].index('--memory-archs')]
    assert modes == ['default', 'reduce-overhead']
    assert cuda[0][cuda[0].index('--infer-batch') + 1] == '8'  # issue 26's batch
    assert cuda[1][cuda[1].index('--infer-batch') + 1] == '256'


@pytest.mark.parametrize('quick', [False, True])
def test_the_training_config_and_data(tmp_path, quick):
    from mmengine.config import Config

    import mmdeit  # noqa: F401  (the recipe's bases)

    args = gpu_check.parse_args(['--quick'] * quick + ['--images', '8', '--batch', '2'])
    root = gpu_check.write_imagenet(tmp_path / 'imagenet', 8, 2, size=(16, 16))
    train = (root / 'meta' / 'train.txt').read_text().splitlines()
    assert len(train) == 8 and all((root / 'train' / line.split()[0]).is_file() for line in train)
    assert len((root / 'meta' / 'val.txt').read_text().splitlines()) == 2
    cfg = Config.fromfile(str(gpu_check.train_config(args, tmp_path, root)))
    assert cfg.train_dataloader.dataset.data_root == str(root)
    assert cfg.train_dataloader.batch_size == 2
    iters_per_epoch = math.ceil(8 / 2)
    assert cfg.train_cfg.max_epochs * iters_per_epoch >= args.iters
    if quick:
        assert cfg.model.backbone.arch == 'deit-tiny' and cfg.model.head.in_channels == 192
    else:
        assert cfg.model.backbone.arch == 'deit-small'


def test_training_summary(tmp_path):
    vis = tmp_path / '20261201_000000' / 'vis_data'
    vis.mkdir(parents=True)
    rows = [dict(loss=7.0, time=9.0, memory=100, step=1), dict(loss=6.5, time=0.2, step=2)]
    rows += [dict(loss=6.0, time=0.4, memory=120, step=3), {'accuracy/top1': 50.0, 'step': 3}]
    (vis / 'scalars.json').write_text('\n'.join(map(json.dumps, rows)) + '\n')
    summary = gpu_check.train_summary(tmp_path)
    assert summary['iterations'] == 3 and summary['first_loss'] == 7.0
    assert summary['last_loss'] == 6.0 and summary['median_iter_s'] == pytest.approx(0.3)
    assert summary['memory_mb'] == 120 and summary['val'] == [rows[-1]]
    assert gpu_check.train_summary(tmp_path / 'missing') == dict(iterations=0)


def test_the_tests_step_selects_the_device_tests():
    cmd = gpu_check.tests_command(gpu_check.parse_args([]))
    files = [a for a in cmd if a.startswith('tests/')]
    assert files and all((gpu_check.REPO / f).is_file() for f in files)
    assert cmd[-2:] == ['-k', 'device']


@pytest.mark.parametrize('quick', [False, True])
def test_the_launch_profile_commands_parse(tmp_path, quick):
    """bf16 inference, on a GPU compiled in the default mode and with CUDA graphs, on the CPU
    without; then eager training steps."""
    from tools.analysis import launch_profile

    infer, train = gpu_check.launch_commands(
        gpu_check.parse_args(['--device', 'cpu'] + ['--quick'] * quick), tmp_path
    )
    parsed = launch_profile.parse_args(infer[2:])
    assert parsed.dtype == 'bf16' and parsed.out == str(tmp_path / 'launch_profile.json')
    assert 'reduce-overhead' not in parsed.compile and not parsed.train
    parsed = launch_profile.parse_args(train[2:])
    assert parsed.train and parsed.compile == []
    assert parsed.out == str(tmp_path / 'launch_profile_train.json')
    infer, train = gpu_check.launch_commands(gpu_check.parse_args([]), tmp_path)
    assert infer[infer.index('--compile') + 1 :][:2] == ['default', 'reduce-overhead']
    assert infer[infer.index('--batch') + 1] == '8' and train[train.index('--batch') + 1] == '64'


def test_the_launch_steps_run_as_a_user_runs_them(tmp_path):
    """``gpu_check.py --steps launch --device cpu --quick`` as a subprocess from a folder
    outside the checkout: both launch_profile runs exit 0 and write their reports."""
    import subprocess
    import sys

    out, cwd = tmp_path / 'out', tmp_path / 'elsewhere'
    cwd.mkdir()
    tool = gpu_check.REPO / 'tools' / 'analysis' / 'gpu_check.py'
    argv = ['--steps', 'launch', '--device', 'cpu', '--quick', '--out', str(out)]
    proc = subprocess.run(
        [sys.executable, str(tool), *argv], cwd=cwd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / 'gpu_check.json').read_text())
    assert [s['name'] for s in summary['steps']] == ['launch', 'launch_train'] and summary['ok']
    train = json.loads((out / 'launch_profile_train.json').read_text())
    assert train['args']['train'] and all(k.endswith('[train]') for k in train['results'])
