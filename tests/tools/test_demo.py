"""``make demo`` as a user runs it: tools/demo.py from another folder, a line per run, the table.

Shortened to a few steps (``--student-steps``/``--teacher-steps``); the point, the arms, the
pairing and the report are the demo's own.
"""

import json
import re

import pytest

from tests.journeys.conftest import run_cli, tool
from tools import demo, digits_study

QUICK = ['--size', '0.1', '--student-steps', '6', '--teacher-steps', '3', '--seeds', '0', '1']


def test_demo_prints_a_line_per_run_then_the_table(tmp_path):
    out = run_cli([tool('demo.py'), '--work-dir', 'demo', *QUICK], tmp_path, 'demo').stdout
    lines = re.findall(
        r'^\[\s*(\d+)/8\] +strong +0.1 \( *143 img\) seed (\d) +(\w+): top-1', out, re.M
    )
    assert sorted((int(seed), arm) for _, seed, arm in lines) == sorted(
        (seed, arm) for seed in (0, 1) for arm in digits_study.STUDY_ARMS
    )
    assert 'mmengine - INFO' not in out  # the Runner's logs are in the work dir, not here
    assert 'docs/digits.md' in out  # the rest of the study
    assert '| strong | 143 (10%) | 2 |' in out and 'hard − none' in out
    assert 'python tools/demo.py --work-dir demo --size 0.1 --student-steps 6' in out
    # then the committed convergence runs (issue 27), said to be those, not the demo's
    assert 'This point is far from converged' in out and 'not run by the' in out
    assert re.search(r'strong +690 steps: none +[\d.]+ +hard +[\d.]+ +hard − none', out)
    assert 'best no-teacher student B: ' in out
    # and last the cluttered task's committed runs, where the convnet's bias matters
    cluttered = out[out.index('on cluttered digits') :]
    assert 'not run by the demo' in cluttered and 'cluttered_digits_convergence.jsonl' in cluttered
    assert re.search(r'mild +5520 steps: none +[\d.]+ +hard +[\d.]+ +hard − none', cluttered)
    assert 'best no-teacher student B: ' in cluttered
    run = tmp_path / 'demo' / 'strong' / 'size_0.1' / 'seed_1'
    assert 'Epoch(train)' in (run / 'cell.log').read_text()
    hard = json.loads((run / 'hard' / 'result.json').read_text())
    assert hard['steps'] == 6 and hard['images'] == 143
    assert {'per_head/cls_top1', 'per_head/teacher_top1'} <= set(hard['metrics'])
    assert (tmp_path / 'demo' / 'digits_study.png').stat().st_size > 0

    # run again: every finished run is reused, nothing is trained
    args = digits_study.parse_args(['--work-dir', str(tmp_path / 'demo'), '--sizes', '0.1'])
    again = digits_study.run_cell(('strong', 0.1, 1), args, redirect=False)
    assert [r['reused'] for r in again] == [True] * 4
    assert again[2]['metrics'] == hard['metrics']


def test_demo_defaults_are_the_studys_point():
    args = demo.parse_args([])
    assert (args.size, args.aug, args.seeds) == (demo.SIZE, demo.AUG, list(demo.SEEDS))
    argv = demo.study_argv(args)
    assert argv[argv.index('--student-steps') + 1] == str(digits_study.STUDENT_STEPS)


def test_demo_rejects_repeated_seeds():
    with pytest.raises(SystemExit):
        demo.parse_args(['--seeds', '1', '1'])
