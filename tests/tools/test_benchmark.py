"""A quick run of tools/analysis/benchmark.py on a tiny arch: it runs and reports sane numbers.

Not a timed test: nothing here compares speeds, only that the report is complete and finite.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'tools' / 'analysis' / 'benchmark.py'
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
LIBS = ('mmdeit', 'mmpretrain', 'timm')


def _load_script():
    spec = importlib.util.spec_from_file_location('mmdeit_benchmark_script', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def script():
    return _load_script()


@pytest.fixture(scope='module')
def report(script, tmp_path_factory):
    out = tmp_path_factory.mktemp('benchmark') / 'report.json'
    tiny = json.dumps(TINY)
    args = dict(
        arch=tiny, img_size=32, patch_size=8, num_classes=10, infer_batch=2, train_batch=2,
        rounds=2, train_rounds=1, teacher='test_resnet', memory_archs=tiny, memory_batch=2,
        memory_jobs=2, out=out,
    )  # fmt: skip
    argv = [item for k, v in args.items() for item in (f'--{k.replace("_", "-")}', str(v))]
    # In this process (mmdeit is already imported); the memory runs are subprocesses.
    returned = script.main([*argv, '--profile'])
    report = json.loads(out.read_text())
    assert set(returned) == set(report)
    return report


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_report_has_every_section(report):
    for key in (
        'machine',
        'flops_per_image',
        'inference',
        'train',
        'adamw_step',
        'distillation',
        'memory',
        'profile_inference',
        'profile_train',
        'targets',
    ):
        assert key in report, key
    assert report['machine']['threads'] >= 1 and len(report['machine']['loadavg_start']) == 3
    for section in ('inference', 'train'):
        assert set(report[section]['results']) == set(LIBS)
    assert set(report['targets']) == {
        'inference_speedup',
        'inference_roofline',
        'train_speedup',
        'distill',
    }
    assert {
        'with_teacher',
        'without_teacher',
        'teacher_forward',
        'teacher_forward_channels_last',
        'teacher_in_step',
    } == set(report['distillation']['results'])
    assert len(report['distillation']['results']['teacher_in_step']['times_s']) == 1
    assert [row['with_cp'] for row in report['memory']] == [False, True]
    assert {'matmul', 'attention'} <= set(report['profile_inference']['categories'])


def test_timings_are_positive_and_finite(report):
    for section in ('inference', 'train'):
        for result in report[section]['results'].values():
            assert (
                len(result['times_s'])
                == report['args']['rounds' if section == 'inference' else 'train_rounds']
            )
            for key in ('best_s', 'median_s', 'img_per_s', 'gflops_per_s'):
                assert math.isfinite(result[key]) and result[key] > 0, (section, key)
            assert result['best_s'] <= result['median_s']
    assert report['inference']['mm_peak_gflops'] > 0
    for row in report['memory']:
        assert row['peak_mb'] > 0 and row['step_s'] > 0 and row['step_increase_mb'] >= 0
    for value in _numbers(report):
        assert math.isfinite(value)


def test_flops_and_parity(report):
    flops = report['flops_per_image']
    c, ffn, depth, tokens, patches = 32, 64, 2, 16 + 2, 16
    gemm = 2 * tokens * (4 * c * c + 2 * c * ffn) * depth
    attention = 4 * tokens * tokens * c * depth
    patch_embed = 2 * patches * c * 3 * 8 * 8
    heads = 4 * c * 10
    assert flops['forward'] == patch_embed + gemm + attention + heads
    assert flops['forward_attention'] == attention
    assert flops['train_step'] == 3 * flops['forward'] - patch_embed
    # torch's FlopCounterMode counts the same GEMMs and conv (not SDPA on CPU), 2 per MAC.
    assert report['flop_counter_forward_timm'] == flops['forward_without_attention']
    # mmdeit's last layer computes the outputs of the 2 extra tokens only: the 16 patch rows
    # of q, proj, fc1, fc2 and of both attention matmuls are not executed.
    saved_gemm = 2 * patches * (2 * c * c + 2 * c * ffn)
    saved_attention = 2 * patches * 2 * tokens * c
    assert flops['mmdeit_forward'] == flops['forward'] - saved_gemm - saved_attention
    counted = report['flop_counter_forward_mmdeit']
    assert counted == flops['forward_without_attention'] - saved_gemm
    # Training also skips the branches stochastic depth drops (rates 0 and 0.1 here): expected.
    assert flops['mmdeit_train_step'] < 3 * flops['mmdeit_forward'] - patch_embed
    # The three libraries hold the same weights, so they compute the same logits.
    assert max(report['parity_max_abs_diff'].values()) < 1e-4


@pytest.mark.parametrize(
    'args, match',
    [
        (['--rounds', '0'], '--rounds must be >= 1'),
        (['--memory-jobs', '0'], '--memory-jobs must be >= 1'),
        (['--arch', 'deit-huge'], 'arch must be one of'),
        (['--arch', '[1, 2]'], 'arch must be one of'),
    ],
)
def test_bad_arguments(script, args, match):
    with pytest.raises(ValueError, match=match):
        script.main([*args, '--memory-archs', '--teacher', 'none'])


def test_profile_categories(script):
    import benchmark_timing  # on sys.path once the script is loaded

    cases = {
        'mkldnn::_linear_pointwise': 'matmul',
        'aten::addmm_': 'matmul',
        'aten::_scaled_dot_product_flash_attention_for_cpu': 'attention',
        'aten::gelu_backward': 'gelu',
        'aten::copy_': 'copy',
        'aten::add_': 'other',
    }
    for name, category in cases.items():
        assert benchmark_timing.op_category(name) == category, name
