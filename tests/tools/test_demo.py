"""tools/demo.py end to end on a few digits for one epoch; its teacher reuse, seeds and doc."""

import json

import pytest

from tools import demo, demo_report

QUICK = [
    '--epochs', '1',
    '--cfg-options',
    'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=8',
    'train_dataloader.batch_size=8', 'val_dataloader.batch_size=8',
    'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
    'default_hooks.logger.interval=1',
]  # fmt: skip


def test_demo_trains_all_runs_then_reuses_the_teacher(tmp_path, capsys, monkeypatch):
    work_dir = tmp_path / 'demo'
    per_seed = demo.main(['--work-dir', str(work_dir), *QUICK])
    assert list(per_seed) == [0]
    results = per_seed[0]
    assert [r['row'] for r in results] == [row for row, _ in demo.RUNS]
    assert not any(r['reused'] for r in results)
    for r in results:
        assert 0 <= r['top1'] <= 100 and r['wall_s'] > 0 and r['seed'] == 0
        assert [epoch for epoch, _ in r['curve']] == [1]
    assert (work_dir / 'val_accuracy.png').stat().st_size > 0
    saved = json.loads((work_dir / 'results.json').read_text())
    assert [r['top1'] for r in saved['results']] == [r['top1'] for r in results]
    table = capsys.readouterr().out
    assert all(row in table for row, _ in demo.RUNS) and 'val top-1' in table

    # The same teacher run again: its checkpoint is evaluated by tools/test.py, not retrained.
    evaluated, trained = [], []
    test_main = demo.test_tool.main

    def recorded_test_main(argv):
        evaluated.append(argv)
        return test_main(argv)

    monkeypatch.setattr(demo.test_tool, 'main', recorded_test_main)
    args = demo.parse_args(['--work-dir', str(work_dir), *QUICK])
    cfg = demo.load_config(demo.TEACHER, args, 0, str(work_dir))
    teacher = demo.teacher_result(args, cfg)
    assert teacher['reused'] and teacher['top1'] == pytest.approx(results[0]['top1'])
    assert teacher['wall_s'] == pytest.approx(results[0]['wall_s'])
    assert [argv[:2] for argv in evaluated] == [[cfg.filename, results[0]['checkpoint']]]
    assert 'test_dataloader.dataset.indices=8' in evaluated[0]  # the val options apply to test

    # Another seed, other options or --retrain-teacher: the teacher is trained again.
    def fake_train_run(cfg, row, options):
        trained.append((cfg.randomness.seed, options.get('train_dataloader.batch_size')))
        return dict(row=row)

    monkeypatch.setattr(demo, 'train_run', fake_train_run)
    evaluated.clear()
    other_options = ['--cfg-options', *QUICK[3:], 'train_dataloader.batch_size=4']
    cases = [(QUICK, 1), ([*QUICK, '--retrain-teacher'], 0), ([*QUICK[:2], *other_options], 0)]
    for argv, seed in cases:
        args = demo.parse_args(['--work-dir', str(work_dir), *argv])
        cfg = demo.load_config(demo.TEACHER, args, seed, str(work_dir))
        assert demo.teacher_result(args, cfg)['reused'] is False
    assert trained == [(1, 8), (0, 8), (0, 4)] and not evaluated


def test_seeds_run_the_whole_demo_each_and_write_mean_std_into_the_doc(tmp_path, monkeypatch):
    calls = []

    def fake_run_demo(args, seed, work_dir):
        calls.append((seed, work_dir))
        (tmp_path / work_dir).mkdir(parents=True)
        return [
            dict(row=row, top1=(99.0 + seed) if i == 0 else (95.0 - seed), wall_s=10.0 * (i + 1),
                 curve=[[1, 90.0]], params=1000, images=[16, 8], epochs=1)
            for i, (row, _) in enumerate(demo.RUNS)
        ]  # fmt: skip

    monkeypatch.setattr(demo, 'run_demo', fake_run_demo)
    monkeypatch.chdir(tmp_path)
    doc = tmp_path / 'digits.md'
    doc.write_text(f'intro\n{demo_report.BEGIN}\nold table\n{demo_report.END}\ndiscussion kept\n')
    argv = ['--seeds', '0', '1', '2', '--work-dir', 'w', '--doc', str(doc)]
    per_seed = demo.main(argv)
    assert list(per_seed) == [0, 1, 2]
    assert calls == [(seed, f'w/seed_{seed}') for seed in (0, 1, 2)]
    assert json.loads((tmp_path / 'w' / 'seed_2' / 'results.json').read_text())['seed'] == 2
    text = doc.read_text()
    assert text.startswith('intro\n') and text.endswith('discussion kept\n')
    assert 'old table' not in text
    assert '| teacher (ResNet-18 narrow) | 100.00 ± 1.00 | 99.00 / 100.00 / 101.00 | 10 s |' in text
    assert '| DeiT, soft distillation | 94.00 ± 1.00 |' in text
    assert 'python tools/demo.py --seeds 0 1 2 --work-dir w --doc' in text


def test_demo_rejects_bad_epochs_and_repeated_seeds(tmp_path):
    args = demo.parse_args(['--epochs', '0'])
    with pytest.raises(ValueError, match='epochs must be >= 1'):
        demo.load_config(demo.TEACHER, args, 0, str(tmp_path))
    with pytest.raises(SystemExit):
        demo.parse_args(['--seeds', '1', '1'])


def test_doc_section_needs_its_markers(tmp_path):
    doc = tmp_path / 'docs' / 'digits.md'
    demo_report.write_section(str(doc), 'first')  # a new doc gets the markers
    assert 'first' in doc.read_text()
    doc.write_text('no markers')
    with pytest.raises(ValueError, match='markers'):
        demo_report.write_section(str(doc), 'second')
