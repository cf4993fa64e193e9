"""tools/analysis/loss_curves.py: groups from the command line, each run's log read back, the
table's per-group spread and the plot."""

import json

import pytest

from tools.analysis import loss_curves


def _run(folder, losses, top1):
    log = folder / '20261201_000000' / 'vis_data'
    log.mkdir(parents=True)
    rows = [dict(loss=v, iter=10 * (i + 1), step=10 * (i + 1)) for i, v in enumerate(losses)]
    rows.append({'accuracy/top1': top1 - 5.0, 'step': 1})
    rows.append({'accuracy/top1': top1, 'step': 2})  # the last validation counts
    log.joinpath('scalars.json').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    return str(folder)


def test_groups_table_and_plot(tmp_path, capsys):
    a1 = _run(tmp_path / 'a1', [3.0, 2.0, 1.0], 90.0)
    a2 = _run(tmp_path / 'a2', [3.0, 2.0, 2.0], 92.0)
    b1 = _run(tmp_path / 'b1', [3.0, 1.0, 0.5], 95.0)
    png = tmp_path / 'curves.png'
    argv = ['--runs', f'fp32={a1}', a2, f'bf16={b1}', '--tail', '2', '--out', str(png)]
    text = loss_curves.main(argv)
    assert '| fp32 | 2 | 1.7500 ± 0.3536 (1.5000 / 2.0000) | 91.00 ± 1.41 (90.00 / 92.00) |' in text
    assert '| bf16 | 1 | 0.7500 | 95.00 |' in text
    assert png.stat().st_size > 0 and text in capsys.readouterr().out


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--runs', 'dir_without_label'], 'must start with LABEL=WORK_DIR'),
        (['--runs', '=x'], 'an empty label'),
        (['--runs', 'a=x', '--smooth', '0'], '--smooth must be >= 1'),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        loss_curves.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_folder_without_a_log_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='no \\*/vis_data/scalars.json'):
        loss_curves.read_run(tmp_path)
