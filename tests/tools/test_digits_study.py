"""The digits study: its configs (same subset and steps for every arm), statistics and report."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope
from scipy import stats

from mmdeit.datasets import DigitsDataset
from tools import digits_study, digits_study_common, digits_study_pretrain, digits_study_report

TOOLS = Path(__file__).resolve().parents[2] / 'tools'


def _cfgs(aug='mild', size=0.1, seed=3, steps=690):
    return {
        arm: digits_study.study_config(arm, aug, size, seed, steps, f'/tmp/never/{arm}')
        for arm, _ in digits_study.ARMS
    }


@pytest.mark.parametrize('size', [0.1, 0.25, 1.0])
def test_every_arm_trains_on_the_same_subset_for_the_same_steps(size):
    cfgs = _cfgs(size=size)
    datasets = [cfg.train_dataloader.dataset for cfg in cfgs.values()]
    assert all(d == datasets[0] for d in datasets)  # the same images for all four arms
    if size < 1:
        assert (datasets[0].subset, datasets[0].subset_seed) == (size, 3)
    else:
        assert 'subset' not in datasets[0]
    epochs, images = digits_study.epochs_for(690, size)
    assert images == len(DigitsDataset(subset=datasets[0].get('subset'), subset_seed=3))
    steps = epochs * math.ceil(images / 64)
    assert abs(steps - 690) <= math.ceil(images / 64) / 2  # whole epochs, nearest to 690
    for cfg in cfgs.values():
        assert cfg.train_cfg.max_epochs == epochs == cfg.train_cfg.val_interval  # val once
        assert cfg.param_scheduler[0].end == cfg.param_scheduler[1].begin
        assert cfg.param_scheduler[1].end == epochs
        assert cfg.randomness.seed == 3


def test_simmim_arms_differ_from_their_partners_in_the_initial_encoder_only(tmp_path):
    cfgs = _cfgs(aug='strong', size=0.25)
    for arm, base in digits_study.SIMMIM_ARMS.items():
        fine, scratch = cfgs[arm].to_dict(), cfgs[base].to_dict()
        init, scratch_init = fine['model'].pop('init_cfg'), scratch['model'].pop('init_cfg')
        assert init[:-1] == scratch_init and init[-1]['type'] == 'Pretrained'
        for cfg in (fine, scratch):  # the config files' own names and folders
            cfg.pop('work_dir')
            cfg.pop('filename', None)
        assert fine == scratch
    pre = digits_study_pretrain.pretrain_config(seed=2, epochs=20, work_dir=str(tmp_path))
    assert pre.model.type == 'DeiTSimMIM' and pre.randomness.seed == 2
    assert 'subset' not in pre.train_dataloader.dataset  # every train image, labels unused
    assert pre.train_cfg.max_epochs == 20 == pre.param_scheduler[1].end
    assert pre.param_scheduler[0].end == pre.param_scheduler[1].begin == 2  # the shipped 10 %


def test_simmim_arms_start_from_their_seeds_pretraining(tmp_path):
    """A smoke study: one pretraining epoch, then the fine-tune loads that checkpoint."""
    argv = ['--work-dir', str(tmp_path), '--sizes', '0.1', '--augs', 'mild', '--seeds', '0']
    argv += ['--arms', 'none-simmim', 'none', '--student-steps', '1', '--pretrain-epochs', '1']
    args = digits_study.parse_args(argv + ['--jobs', '1'])
    assert args.arms == ['none', 'none-simmim']  # run order, whatever the order given
    pre = digits_study_pretrain.pretrain_one(0, args, redirect=False)
    assert pre['checkpoint'] == str(tmp_path / 'simmim' / 'seed_0' / 'epoch_1.pth')
    again = digits_study_pretrain.pretrain_one(0, args, redirect=False)
    assert not pre['reused'] and again['reused'] and again['checkpoint'] == pre['checkpoint']
    results = digits_study.run_cell(('mild', 0.1, 0), args, redirect=False)
    assert [r['arm'] for r in results] == ['none', 'none-simmim']
    import torch

    pretrained = torch.load(pre['checkpoint'], map_location='cpu', weights_only=False)
    tuned = torch.load(results[1]['checkpoint'], map_location='cpu', weights_only=False)
    scratch = torch.load(results[0]['checkpoint'], map_location='cpu', weights_only=False)
    key = 'backbone.pos_embed'  # one training step moves it by at most lr x a few
    start = pretrained['state_dict'][key]
    assert (tuned['state_dict'][key] - start).abs().max() < 0.05
    assert (scratch['state_dict'][key] - start).abs().max() > 0.05


def test_the_strong_augmentation_is_applied_to_teacher_and_students_alike():
    mild, strong = _cfgs('mild'), _cfgs('strong')
    for arm in strong:
        assert strong[arm].train_dataloader.dataset.pipeline == digits_study.STRONG_PIPELINE
        assert strong[arm].model.train_cfg.probs == digits_study.STRONG_MIX_PROBS
        assert mild[arm].model.train_cfg.probs == [0.25, 0.25]
    with DefaultScope.overwrite_default_scope('mmdeit'):
        pipeline = Compose(digits_study.STRONG_PIPELINE)
    info = DigitsDataset(subset=20).load_data_list()[0]
    rng_state = np.random.get_state()
    try:
        np.random.seed(0)
        out = [pipeline(dict(info))['inputs'] for _ in range(4)]
    finally:
        np.random.set_state(rng_state)
    assert all(tuple(x.shape) == (3, 16, 16) for x in out)
    assert any(not (out[0] == x).all() for x in out[1:])  # random


def test_t_interval_is_scipys():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, low, high = digits_study_report.t_interval(values)
    ref = stats.t.interval(0.95, 4, loc=3.0, scale=stats.sem(values))
    assert mean == 3.0 and (low, high) == pytest.approx(ref)
    assert math.isnan(digits_study_report.t_interval([2.0])[1])


def _result(arm, seed, top1, aug='strong', size=0.1):
    metrics = {'accuracy/top1': top1, 'per_head/cls_top1': top1 - 1}
    if arm in ('hard', 'soft'):
        metrics.update({'per_head/dist_top1': top1 + 1, 'per_head/dist_teacher_agreement': 90.0})
    return dict(
        arm=arm, aug=aug, size=size, seed=seed, images=143, epochs=230, steps=690,
        metrics=metrics, wall_s=10.0,
    )  # fmt: skip


def test_report_pairs_the_seeds_and_lists_every_point(tmp_path):
    none = [90.0, 91.0, 92.0, 93.0, 94.0]
    gains = [1.0, -2.0, 3.0, 0.5, 2.5]
    results = [_result('none', s, v) for s, v in enumerate(none)]
    results += [_result('hard', s, v + g) for s, (v, g) in enumerate(zip(none, gains))]
    results += [_result('teacher', s, 97.0) for s in range(5)]
    text = digits_study_report.format_report(results, command='python tools/x.py')
    mean, low, high = digits_study_report.t_interval(gains)
    row = next(line for line in text.splitlines() if line.startswith('| strong | 143'))
    assert f'{mean:+.2f} [{low:+.2f}, {high:+.2f}]' in row
    assert '92.00 ± 1.58' in row and '97.00 ± 0.00' in row
    assert 'hard 91.00 / 89.00 / 95.00 / 93.50 / 96.50' in text  # every seed, in order
    assert 'python tools/x.py' in text
    assert 'none-simmim' not in text  # the columns of the arms that ran, no more
    pre = [_result('none-simmim', s, v + 2.0 * s) for s, v in enumerate(none)]
    text = digits_study_report.format_report(results + pre, command='python tools/x.py')
    header = next(line for line in text.splitlines() if line.startswith('| aug | train images'))
    assert header.endswith('| hard − none | none-simmim − none |')
    row = next(line for line in text.splitlines() if line.startswith('| strong | 143'))
    mean, low, high = digits_study_report.t_interval([2.0 * s for s in range(5)])
    assert row.endswith(f'| {mean:+.2f} [{low:+.2f}, {high:+.2f}] |')
    png = tmp_path / 'study.png'
    digits_study_report.plot(results, str(png))
    assert png.stat().st_size > 0
    # the work dir layout is what collect() reads back
    for r in results:
        folder = tmp_path / r['aug'] / f'size_{r["size"]:g}' / f'seed_{r["seed"]}' / r['arm']
        folder.mkdir(parents=True)
        (folder / 'result.json').write_text(json.dumps(r))
    assert len(digits_study_report.collect(str(tmp_path))) == len(results)


def test_doc_section_is_replaced_between_its_markers(tmp_path):
    doc = tmp_path / 'digits.md'
    doc.write_text('intro\n')
    digits_study_report.write_section(str(doc), 'first')
    digits_study_report.write_section(str(doc), 'second')
    text = doc.read_text()
    assert text.startswith('intro\n') and 'second' in text and 'first' not in text


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--sizes', '0'], 'fractions in'),
        (['--sizes', '1.5'], 'fractions in'),
        (['--arms', 'none', 'hard'], 'need the teacher arm'),
        (['--arms', 'none', 'hard-simmim'], 'need the teacher arm'),
        (['--pretrain-epochs', '0'], '--pretrain-epochs must be >= 1'),
        (['--jobs', '0'], '--jobs must be >= 1'),
        (['--student-steps', '0'], '--student-steps must be >= 1'),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        digits_study.parse_args(argv)
    assert message in capsys.readouterr().err


def _study_imports(module: str) -> set:
    """The ``tools.digits_study*`` modules that ``tools/<module>.py`` imports, at any depth."""
    tree = ast.parse((TOOLS / f'{module}.py').read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f'{node.module}.{alias.name}' for alias in node.names}
    return {n.split('.')[1] for n in names if n.startswith('tools.digits_study')}


def test_the_study_modules_import_one_way_only():
    """No import cycle: the shared module imports none of the others, and they not the study."""
    modules = [p.stem for p in TOOLS.glob('digits_study*.py')]
    assert sorted(modules) == sorted(
        ['digits_study', 'digits_study_common', 'digits_study_pretrain', 'digits_study_report']
    )
    graph = {m: _study_imports(m) - {m} for m in modules}
    assert graph['digits_study_common'] == set()
    assert graph['digits_study_pretrain'] == graph['digits_study_report'] == {'digits_study_common'}
    assert graph['digits_study'] == {
        'digits_study_common', 'digits_study_pretrain', 'digits_study_report'
    }  # fmt: skip
    for name in ('STUDENT_STEPS', 'TEACHER_STEPS', 'AUGS', 'ARMS', 'STRONG_PIPELINE'):
        assert getattr(digits_study, name) is getattr(digits_study_common, name)
