"""tools/analysis/benchmark_ablation.py: its variants are fast_path on and off; a tiny run."""

import argparse
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


def test_variants_are_the_fast_path_switch_on_and_off():
    from mmdeit.models.backbones import FastTransformerEncoderLayer

    args = argparse.Namespace(
        arch=json.dumps(TINY), img_size=32, patch_size=8, num_classes=10, drop_path_rate=0.5
    )
    models = _load_script().build_models(args)
    assert list(models) == ['fast_path', 'reference']
    fast, ref = models['fast_path'], models['reference']
    assert fast.backbone.fast_path and not ref.backbone.fast_path
    assert isinstance(fast.backbone.layers[0], FastTransformerEncoderLayer)
    assert not isinstance(ref.backbone.layers[0], FastTransformerEncoderLayer)
    # The same weights, so the same numbers: eval and a training step with drop path.
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in fast.state_dict().items())
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval().predict(x), ref.eval().predict(x))
    outs = []
    for model in (fast, ref):
        torch.manual_seed(0)
        outs.append(model.train().logits(x))
    torch.testing.assert_close(outs[0], outs[1])


def test_tiny_run_reports_every_variant(tmp_path):
    out = tmp_path / 'ablation.json'
    argv = ['--arch', json.dumps(TINY), '--img-size', '32', '--patch-size', '8']
    argv += ['--num-classes', '10', '--infer-batch', '2', '--train-batch', '4']
    argv += ['--rounds', '1', '--train-rounds', '1', '--out', str(out)]
    _load_script().main(argv)
    report = json.loads(out.read_text())
    assert set(report['inference']) == set(report['train']) == {'fast_path', 'reference'}
    for section in ('inference', 'train'):
        for result in report[section].values():
            assert result['best_s'] > 0


@pytest.mark.parametrize('flag', ['--rounds', '--train-rounds', '--infer-batch', '--train-batch'])
def test_bad_counts_are_refused_naming_the_flag(flag):
    with pytest.raises(ValueError, match=f'{flag} must be >= 1, got 0'):
        _load_script().main([flag, '0'])
