"""tools/analysis/malloc_ab.py as a user runs it: a subprocess from a folder outside the checkout,
a tiny model, one pair of processes."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tools.analysis import malloc_ab

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'analysis' / 'malloc_ab.py'
TINY = json.dumps(dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64))


@pytest.mark.parametrize('section, dtype', [('inference', 'bf16'), ('train', 'fp32')])
def test_one_pair_of_processes_each_under_its_setting(tmp_path, section, dtype):
    out = tmp_path / 'ab.json'
    argv = [
        '--arch', TINY, '--img-size', '32', '--patch-size', '8', '--num-classes', '10',
        '--batch', '2', '--calls', '2', '--pairs', '1', '--section', section, '--dtype', dtype,
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, str(TOOL), *argv, '--out', str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'pair 1/1 glibc' in run.stdout and 'pair 1/1 keep' in run.stdout
    results = json.loads(out.read_text())['results']
    assert set(results) == {'glibc', 'keep'}
    glibc, keep = results['glibc'][0], results['keep'][0]
    assert glibc['kept'] is None
    if platform.libc_ver()[0] == 'glibc':
        assert keep['kept'] == dict(mmap_threshold=32 << 20, trim_threshold=1 << 30)
    for r in (glibc, keep):
        assert len(r['times_s']) == len(r['faults']) == 2
        assert 0 < r['best_s'] <= r['median_s'] and all(f >= 0 for f in r['faults'])


@pytest.mark.parametrize('flag', ['--pairs', '--calls', '--batch', '--threads'])
def test_counts_below_one_are_refused_naming_the_option(flag, capsys):
    with pytest.raises(SystemExit):
        malloc_ab.parse_args([flag, '0'])
    assert f'{flag} must be >= 1' in capsys.readouterr().err
