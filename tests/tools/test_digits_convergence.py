"""The convergence study (issue 27): its runs, folders, configs per task, report and CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdeit.datasets import ClutteredDigitsDataset
from tools import digits_convergence as conv
from tools import digits_convergence_report as report
from tools import digits_study_common, digits_study_report

ROOT = Path(__file__).resolve().parents[2]


def _args(tmp_path, *argv):
    return conv.parse_args(['--work-dir', str(tmp_path), *argv])


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--steps', '0', '690'], '--steps must be >= 1'),
        (['--steps', '690', '690'], '--steps must be distinct'),
        (['--seeds', '1', '1'], '--seeds must be distinct'),
        (['--teacher-steps', '0'], '--teacher-steps must be >= 1'),
        (['--jobs', '0'], '--jobs must be >= 1'),
        (['--task', 'mnist'], "invalid choice: 'mnist'"),
        (['--arms', 'teacher'], "invalid choice: 'teacher'"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        conv.parse_args(argv)
    assert message in capsys.readouterr().err


def test_defaults_are_the_protocols(tmp_path):
    args = _args(tmp_path)
    assert args.steps == [690, 1380, 2760, 5520] and args.teacher_steps == 2760
    assert args.arms == ['none', 'hard'] and args.seeds == [0, 1, 2, 3, 4]
    assert args.augs == ['mild', 'strong'] and args.task == 'digits'
    args = _args(tmp_path, '--steps', '2760', '690', '--arms', 'soft', 'none')
    assert args.steps == [690, 2760] and args.arms == ['none', 'soft']  # run order
    assert conv.run_dir(args, 'mild', 3, 'teacher') == str(tmp_path / 'digits/mild/seed_3/teacher')
    assert conv.run_dir(args, 'strong', 1, 'hard', 690) == str(
        tmp_path / 'digits/strong/seed_1/steps_690/hard'
    )


@pytest.mark.parametrize('task', ['digits', 'cluttered'])
@pytest.mark.parametrize('aug', ['mild', 'strong'])
def test_every_arm_of_a_task_sees_the_same_data(task, aug):
    spec = conv.TASKS[task]
    cfgs = {
        arm: digits_study_common.run_config(
            spec[arm], aug, 2, steps, f'/tmp/never/{arm}', img_size=spec['img_size']
        )
        for arm, steps in (('teacher', 2760), ('none', 5520), ('hard', 690), ('soft', 1380))
    }
    datasets = [cfg.train_dataloader.dataset for cfg in cfgs.values()]
    assert all(d == datasets[0] for d in datasets)
    assert (
        datasets[0].type == {'digits': 'DigitsDataset', 'cluttered': 'ClutteredDigitsDataset'}[task]
    )
    epochs = {arm: cfg.train_cfg.max_epochs for arm, cfg in cfgs.items()}
    assert epochs == dict(teacher=120, none=240, hard=30, soft=60)  # 23 iterations per epoch
    assert all(cfg.randomness.seed == 2 for cfg in cfgs.values())
    pipeline = datasets[0].pipeline
    if aug == 'mild':
        return
    if task == 'digits':  # the earlier study's augmentation, unchanged
        assert pipeline == digits_study_common.STRONG_PIPELINE
    else:  # no upsampling; fill and noise from the canvas's statistics
        assert [t['type'] for t in pipeline][0] == 'RandomResizedCrop'
        assert pipeline[0]['scale'] == 32
        assert pipeline[1]['hparams']['pad_val'] == [32] * 3
        assert pipeline[2]['fill_color'] == [32.0] * 3 and pipeline[2]['fill_std'] == [73.28] * 3


def test_cluttered_configs_normalise_with_the_train_images_statistics():
    from mmengine.config import Config

    cfg = Config.fromfile(ROOT / 'configs' / (conv.TASKS['cluttered']['none'] + '.py'))
    dataset = ClutteredDigitsDataset(split='train', pipeline=[])
    pixels = np.stack([dataset.get_data_info(i)['img'] for i in range(len(dataset))])
    assert cfg.data_preprocessor.mean[0] == pytest.approx(pixels.mean(), abs=0.01)
    assert cfg.data_preprocessor.std[0] == pytest.approx(pixels.std(), abs=0.01)
    assert cfg.model.backbone.img_size == 32 == pixels.shape[1]


def _result(arm, seed, top1, aug='mild', budget=690, task='digits'):
    return dict(
        task=task, aug=aug, seed=seed, arm=arm, budget=budget, steps=budget, epochs=30,
        images=1437, metrics={'accuracy/top1': top1}, final_loss=1.0, wall_s=60.0,
    )  # fmt: skip


def test_report_finds_the_best_baseline_and_pairs_by_seed(tmp_path):
    none_690, none_1380 = [80.0, 82.0, 84.0], [90.0, 91.0, 95.0]
    strong_none = [85.0, 86.0, 87.0]
    results = [_result('none', s, v) for s, v in enumerate(none_690)]
    results += [_result('none', s, v, budget=1380) for s, v in enumerate(none_1380)]
    results += [_result('none', s, v, aug='strong', budget=1380) for s, v in enumerate(strong_none)]
    hard = [92.0, 90.0, 97.0]
    results += [_result('hard', s, v, aug='strong', budget=1380) for s, v in enumerate(hard)]
    results += [_result('teacher', s, 99.0, budget=2760) for s in range(3)]
    assert report.best_baseline(results) == ('mild', 1380)
    text = report.format_report(results, command='python tools/x.py')
    mean, low, high = digits_study_report.t_interval([h - b for h, b in zip(hard, none_1380)])
    best_row = next(line for line in text.splitlines() if line.startswith('| strong | 1380 | hard'))
    assert f'{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n=3)' in best_row
    mean, low, high = digits_study_report.t_interval([h - b for h, b in zip(hard, strong_none)])
    curve_row = next(line for line in text.splitlines() if line.startswith('| strong | 1380 |'))
    assert f'{mean:+.2f} [{low:+.2f}, {high:+.2f}] (n=3)' in curve_row
    assert '- strong, hard, 1380 steps: 0: 92.00 / 1: 90.00 / 2: 97.00' in text
    assert '| mild | 2760 | 3 | 99.00 ± 0.00 | 1.000 |' in text  # the teachers
    lines = report.summary(results).splitlines()
    assert lines[-1].startswith('  best no-teacher student B: mild, 1380 steps (92.00)')
    assert 'best distilled: hard, strong, 1380 steps (93.00)' in lines[-1]
    assert any(line.startswith('  strong  1380 steps: none  86.00  hard  93.00') for line in lines)
    assert lines[0] == '    mild teacher:  99.00'  # the teachers of an augmentation with students
    report.plot(results, str(tmp_path / 'curve.png'))
    assert (tmp_path / 'curve.png').stat().st_size > 0


def test_results_file_keeps_each_run_once_and_the_folder_wins(tmp_path):
    path = str(tmp_path / 'runs.jsonl')
    first = dict(_result('none', 0, 80.0), checkpoint='/x.pth', reused=False)
    conv.keep(path, first)
    conv.keep(path, dict(first, reused=True))
    kept = report.read_results(path)
    assert len(kept) == 1 and 'checkpoint' not in kept[0] and 'reused' not in kept[0]
    folder = tmp_path / 'work' / 'mild' / 'seed_0' / 'steps_690' / 'none'
    folder.mkdir(parents=True)
    (folder / 'result.json').write_text(json.dumps(_result('none', 0, 81.0)))
    (folder.parent.parent / 'teacher').mkdir()
    (folder.parent.parent / 'teacher' / 'result.json').write_text(
        json.dumps(_result('teacher', 0, 99.0, budget=2760))
    )
    runs = report.collect(str(tmp_path / 'work'), path)
    assert [(r['arm'], r['metrics']['accuracy/top1']) for r in runs] == [
        ('none', 81.0), ('teacher', 99.0)
    ]  # fmt: skip


def test_a_cell_trains_its_teacher_once_and_reuses_it(tmp_path):
    """A smoke cell: the teacher, then none and hard at one tiny budget; run again, nothing
    is trained again."""
    results_file = tmp_path / 'runs.jsonl'
    args = _args(tmp_path, '--seeds', '0', '--augs', 'mild', '--steps', '1', '--teacher-steps', '1')
    args.results = str(results_file)
    results = conv.run_cell(('mild', 0), args, redirect=False)
    assert [(r['arm'], r['reused']) for r in results] == [
        ('teacher', False), ('none', False), ('hard', False)
    ]  # fmt: skip
    assert all(r['epochs'] == 1 and r['steps'] == 23 for r in results)
    hard = results[2]['metrics']
    assert 'per_head/dist_teacher_agreement' in hard  # it learnt from that teacher
    again = conv.run_cell(('mild', 0), args, redirect=False)
    assert all(r['reused'] for r in again)
    assert len(report.read_results(str(results_file))) == 3


def test_a_study_as_a_user_runs_it_prints_a_line_per_run(tmp_path):
    """From a folder outside the checkout, one worker running two cells: a line per run on the
    terminal for both (the first cell's log redirection must not swallow the second's lines),
    the runs kept in the results file, the doc's section written."""
    runs, doc = tmp_path / 'runs.jsonl', tmp_path / 'doc.md'
    doc.write_text('# my doc\n')
    cmd = [sys.executable, str(ROOT / 'tools' / 'digits_convergence.py'), '--work-dir', 'work']
    cmd += ['--steps', '1', '--seeds', '0', '1', '--augs', 'mild', '--arms', 'none', '--jobs', '1']
    cmd += ['--results', str(runs), '--doc', str(doc)]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = re.findall(
        r'^\d\d:\d\d:\d\d digits +mild seed (\d) +none +1 steps: top-1', out.stdout, re.M
    )
    assert sorted(lines) == ['0', '1'], out.stdout[-3000:]
    assert 'mmengine - INFO' not in out.stdout  # the Runner's logs are in the cells' logs
    assert (
        'Epoch(train)'
        in (tmp_path / 'work' / 'digits' / 'mild' / 'seed_1' / 'cell.log').read_text()
    )
    assert len(report.read_results(str(runs))) == 2
    assert report.begin('digits') in doc.read_text() and '| mild | 1 | ' in doc.read_text()
    # another machine, only the committed results file: the same report
    doc.write_text('# my doc\n')
    conv.main(['--report-only', '--results', str(runs), '--work-dir', str(tmp_path / 'new')]
              + ['--doc', str(doc)])  # fmt: skip
    assert '| mild | 1 | ' in doc.read_text()
    assert (tmp_path / 'new' / 'digits_convergence.png').stat().st_size > 0


def test_the_study_modules_import_one_way_only():
    """The convergence modules import the shared ones, never the reverse (no cycle)."""
    tools = ROOT / 'tools'
    for shared in ('digits_study_common', 'digits_study_report', 'digits_study'):
        assert 'digits_convergence' not in (tools / f'{shared}.py').read_text()
    assert 'import digits_convergence' not in (tools / 'digits_convergence_report.py').read_text()


def test_report_names_where_the_runs_were_made():
    from tools.digits_convergence_report import machines_line

    line = machines_line([dict(machine='cpu A'), dict(machine='cpu A'), dict()])
    assert line.startswith('Runs made on: cpu A (2 runs); not recorded (1 runs).')
    assert 'Report written on: ' in line


def test_a_result_json_does_not_drop_the_recorded_machine(tmp_path):
    import json

    from tools.digits_convergence_report import collect, key

    run = dict(task='cluttered', aug='mild', seed=0, arm='none', budget=690, steps=690)
    (tmp_path / 'r.jsonl').write_text(json.dumps(dict(run, machine='cpu A')) + '\n')
    folder = tmp_path / 'mild' / 'seed_0' / 'steps_690' / 'none'
    folder.mkdir(parents=True)
    (folder / 'result.json').write_text(json.dumps(run))
    (merged,) = collect(str(tmp_path), str(tmp_path / 'r.jsonl'))
    assert key(merged) == key(run) and merged['machine'] == 'cpu A'
