"""tools/analysis/tool_exit_time.py as a user runs it: a subprocess from a folder outside the
checkout, one round of the training tool under each setting."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.analysis import tool_exit_time

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'analysis' / 'tool_exit_time.py'


def test_one_round_times_each_setting_and_prints_the_table(tmp_path):
    out = tmp_path / 'exit.json'
    run = subprocess.run(
        [sys.executable, str(TOOL), '--tools', 'train', '--rounds', '1', '--out', str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for setting in ('frozen', 'off'):
        assert f'round 1/1 train {setting}' in run.stdout, run.stdout
    table = run.stdout.split('tool    frozen best/median')[1]
    assert table.splitlines()[1].split()[0] == 'train'
    result = json.loads(out.read_text())
    assert set(result['seconds']) == {'train'}
    assert {s: len(t) for s, t in result['seconds']['train'].items()} == {'frozen': 1, 'off': 1}
    assert result['summary']['train']['off_over_frozen'] > 0


def test_test_and_infer_alone_still_train_first_untimed():
    args = tool_exit_time.parse_args(['--tools', 'infer', 'test'])
    assert args.tools == ['train', 'test', 'infer'] and args.train_untimed


def test_zero_rounds_are_refused_naming_the_option(capsys):
    with pytest.raises(SystemExit):
        tool_exit_time.parse_args(['--rounds', '0'])
    assert '--rounds must be at least 1' in capsys.readouterr().err
