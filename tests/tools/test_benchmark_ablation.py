"""tools/analysis/benchmark_ablation.py: its switches really switch, and a tiny run reports."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)


def _load_script():
    path = ROOT / 'tools' / 'analysis' / 'benchmark_ablation.py'
    spec = importlib.util.spec_from_file_location('mmdeit_benchmark_ablation', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_switches_turn_each_measure_off():
    from mmdeit.models.backbones import DistilledVisionTransformer
    from mmdeit.models.utils import onednn_linear

    script = _load_script()
    model = DistilledVisionTransformer(arch=TINY, img_size=32, patch_size=8, drop_path_rate=0.5)
    fc1_rows, branch_batches = [], []
    model.layers[-1].ffn.layers[0][0].register_forward_pre_hook(
        lambda m, a: fc1_rows.append(a[0].shape[:2])
    )
    last_ln2 = model.layers[-1].ln2
    last_ln2.register_forward_pre_hook(lambda m, a: branch_batches.append(a[0].shape[0]))
    x = torch.randn(16, 3, 32, 32)

    def run(**switches):
        fc1_rows.clear()
        branch_batches.clear()
        with script._switches(**switches):
            torch.manual_seed(0)
            model.train()(x)
            has_op = onednn_linear._HAS_OP
        return list(fc1_rows), list(branch_batches), has_op

    rows, batches, _ = run()
    assert rows[0][1] == 2 and batches[0] < 16  # pruned last layer, dropped samples skipped
    rows, batches, _ = run(no_pruning=True, no_skip=True)
    assert rows == [torch.Size([16, 18])] and batches == [16]
    assert run(no_onednn=True)[2] is False
    assert onednn_linear._HAS_OP is (run()[2])  # restored after the block


def test_tiny_run_reports_every_variant(tmp_path):
    out = tmp_path / 'ablation.json'
    argv = ['--arch', json.dumps(TINY), '--img-size', '32', '--patch-size', '8']
    argv += ['--num-classes', '10', '--infer-batch', '2', '--train-batch', '4']
    argv += ['--rounds', '1', '--train-rounds', '1', '--out', str(out)]
    _load_script().main(argv)
    report = json.loads(out.read_text())
    assert set(report['inference']) == {'all', 'no_onednn', 'no_last_layer_pruning', 'neither'}
    assert set(report['train']) == {'all', 'no_skip_dropped', 'no_last_layer_pruning', 'neither'}
    for section in ('inference', 'train'):
        for result in report[section].values():
            assert result['best_s'] > 0


@pytest.mark.parametrize('flag', ['--rounds', '--train-rounds', '--infer-batch', '--train-batch'])
def test_bad_counts_are_refused_naming_the_flag(flag):
    with pytest.raises(ValueError, match=f'{flag} must be >= 1, got 0'):
        _load_script().main([flag, '0'])
