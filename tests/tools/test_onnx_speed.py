"""tools/analysis/onnx_speed.py on the DeiT-Ti recipe at batch 1: the report's fields, and the
export computing PyTorch's logits. Not a timed test: nothing here compares speeds."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tools.analysis import onnx_speed

from ..deployment.conftest import TINY, config_path

TOOL = Path(onnx_speed.__file__).resolve()
ARGV = ['--batch', '1', '--threads', '1', '--rounds', '1', '--calls', '1', '--settle', '0']


def test_report_fields_and_agreement(tmp_path, capsys):
    out = tmp_path / 'speed.json'
    result = onnx_speed.main(['--config', config_path(TINY), *ARGV, '--out', str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result['images_per_s']) == {'mmdeit eager (fast_path)', 'onnxruntime'}
    assert all(rate > 0 for rate in result['images_per_s'].values())
    assert result['logits_max_abs_diff'] < 1e-4
    assert (result['batch'], result['input_size'], result['threads']) == (1, [224, 224], 1)
    assert result['malloc']['option'] == 'keep'  # the default, as benchmark.py and the tools
    assert 'mmdeit / onnxruntime' in capsys.readouterr().out


@pytest.mark.parametrize('choice', [None, 'keep', 'glibc'])
def test_malloc_choice_as_a_user_runs_it(tmp_path, choice):
    """The tool as a subprocess from a folder outside the checkout (the malloc setting is
    process-wide: only a fresh process shows what the tool set): freed memory kept by default
    and with ``--malloc keep``, glibc's own thresholds with ``--malloc glibc``."""
    out = tmp_path / 'speed.json'
    option = [] if choice is None else ['--malloc', choice]
    run = subprocess.run(
        [sys.executable, str(TOOL), '--config', config_path(TINY), *ARGV, *option,
         '--out', str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    expected = choice or 'keep'
    assert f'malloc {expected}' in run.stdout and 'mmdeit / onnxruntime' in run.stdout
    malloc = json.loads(out.read_text())['malloc']
    assert malloc['option'] == expected
    if expected == 'glibc':
        assert malloc['kept'] is None
    elif platform.libc_ver()[0] == 'glibc':
        assert malloc['kept'] == dict(mmap_threshold=32 << 20, trim_threshold=1 << 30)


def test_unknown_malloc_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        onnx_speed.parse_args(['--malloc', 'jemalloc'])
    assert "--malloc: invalid choice: 'jemalloc'" in capsys.readouterr().err


@pytest.mark.parametrize('flag', ['--batch', '--threads', '--rounds', '--calls'])
def test_counts_below_one_are_refused_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit):
        onnx_speed.parse_args([flag, '0'])
    assert f'{flag[2:]} must be >= 1, got 0' in capsys.readouterr().err


def test_a_negative_pause_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        onnx_speed.parse_args(['--settle', '-1'])
    assert 'settle must be >= 0, got -1.0' in capsys.readouterr().err


def test_each_runtimes_calls_start_after_the_pause(monkeypatch):
    """``--settle`` (default 0.1 s): a pause before each runtime's block of calls, the warm-up
    round included, so neither starts while the other's threads still spin."""
    assert onnx_speed.parse_args([]).settle == 0.1
    events = []
    monkeypatch.setattr(onnx_speed.time, 'sleep', lambda s: events.append(s))
    fns = {name: lambda name=name: events.append(name) for name in ('torch', 'ort')}
    times = onnx_speed.measure(fns, rounds=2, calls=2, settle=0.3)
    assert events == [0.3, 'torch', 'torch', 0.3, 'ort', 'ort'] + [
        0.3,
        'ort',
        'ort',
        0.3,
        'torch',
        'torch',
        0.3,
        'torch',
        'torch',
        0.3,
        'ort',
        'ort',
    ]
    assert {name: len(t) for name, t in times.items()} == {'torch': 2, 'ort': 2}
