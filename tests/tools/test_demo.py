"""tools/demo.py end to end on a few digits for one epoch; tools/digits_seeds.py's doc writing."""

import json

import pytest

from tools import demo, digits_seeds

QUICK = [
    '--epochs', '1',
    '--cfg-options',
    'train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=8',
    'train_dataloader.batch_size=8', 'val_dataloader.batch_size=8',
    'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False', 'val_dataloader.persistent_workers=False',
    'default_hooks.logger.interval=1',
]  # fmt: skip


def test_demo_trains_all_runs_then_reuses_the_teacher(tmp_path, capsys):
    work_dir = tmp_path / 'demo'
    results = demo.main(['--work-dir', str(work_dir), *QUICK])
    assert [r['row'] for r in results] == [row for row, _ in demo.RUNS]
    assert not any(r['reused'] for r in results)
    for r in results:
        assert 0 <= r['top1'] <= 100 and r['wall_s'] > 0
        assert [epoch for epoch, _ in r['curve']] == [1]
    assert (work_dir / 'val_accuracy.png').stat().st_size > 0
    saved = json.loads((work_dir / 'results.json').read_text())
    assert [r['top1'] for r in saved['results']] == [r['top1'] for r in results]
    table = capsys.readouterr().out
    assert all(row in table for row, _ in demo.RUNS) and 'val top-1' in table

    # the same teacher run again: its checkpoint is evaluated, not retrained
    args = demo.parse_args(['--work-dir', str(work_dir), *QUICK])
    teacher = demo.teacher_result(args, demo.load_config(demo.TEACHER, args))
    assert teacher['reused'] and teacher['top1'] == pytest.approx(results[0]['top1'])
    assert teacher['wall_s'] == pytest.approx(results[0]['wall_s'])
    # another seed is another teacher: the checkpoint is not reused (not run here)
    assert json.loads((work_dir / demo.TEACHER / demo.RESULT_FILE).read_text())['seed'] == 0


def test_demo_rejects_bad_epochs():
    args = demo.parse_args(['--epochs', '0'])
    with pytest.raises(ValueError, match='epochs must be >= 1'):
        demo.load_config(demo.TEACHER, args)


def _result(row, top1, wall_s):
    return dict(row=row, top1=top1, wall_s=wall_s)


def test_seeds_section_mean_std_and_markers(tmp_path):
    per_seed = {
        seed: [_result('teacher', 99.0 + seed, 10.0), _result('DeiT, hard', 95.0 - seed, 20.0)]
        for seed in (0, 1, 2)
    }
    section = digits_seeds.format_section(per_seed, {0: 60, 1: 60, 2: 90}, 'CMD', 'HOST')
    assert '| teacher | 100.00 ± 1.00 | 99.00 / 100.00 / 101.00 | 10 s |' in section
    assert '| DeiT, hard | 94.00 ± 1.00 |' in section
    assert 'CMD' in section and 'Machine: HOST.' in section and 'seed 2: 1.5 min' in section

    doc = tmp_path / 'docs' / 'digits.md'
    digits_seeds.write_section(str(doc), 'first')
    text = doc.read_text()
    doc.write_text('intro\n' + text + 'discussion kept\n')
    digits_seeds.write_section(str(doc), 'second')
    text = doc.read_text()
    assert text.startswith('intro\n') and text.endswith('discussion kept\n')
    assert 'second' in text and 'first' not in text

    doc.write_text('no markers')
    with pytest.raises(ValueError, match='markers'):
        digits_seeds.write_section(str(doc), 'third')
