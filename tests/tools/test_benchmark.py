"""tools/analysis/benchmark.py on a tiny arch: the models agree, FLOPs, the report's fields.

Not a timed test: nothing here compares speeds.
"""

import json
import math
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mmdeit.models.backbones import FastTransformerEncoderLayer
from tools.analysis import benchmark, deit_models, op_profile, step_memory

TINY = json.dumps(dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64))
ARGV = [
    '--arch', TINY, '--img-size', '32', '--patch-size', '8', '--num-classes', '10',
    '--infer-batch', '2', '--train-batch', '2', '--rounds', '2', '--train-rounds', '1',
    '--mm-size', '128',  # the n x n roofline: 2048 (the default) takes minutes in emulated bf16
    '--settle', '0',  # no pause between calls (tested below)
    '--teacher', 'test_resnet',
]  # fmt: skip
PEERS = ('mmpretrain', 'timm')
TOOL = Path(benchmark.__file__).resolve()


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('benchmark') / 'report.json'
    returned = benchmark.main([*ARGV, '--profile', '--out', str(out)])
    saved = json.loads(out.read_text())
    assert set(saved) == set(returned)
    return saved


def test_report_has_every_section(report):
    expected = {'machine', 'args', 'parity_max_abs_diff', 'inference', 'train', 'distillation'}
    assert expected | {'profile_inference', 'profile_train'} == set(report)
    assert report['machine']['threads'] >= 1 and report['machine']['dtype'] == 'fp32'
    malloc = report['machine']['malloc']  # the default: freed memory kept, as mmdeit's tools do
    assert malloc['option'] == 'keep'
    if platform.libc_ver()[0] == 'glibc':
        assert malloc['kept'] == dict(mmap_threshold=32 << 20, trim_threshold=1 << 30)
    libs = {'mmdeit', *PEERS, deit_models.REFERENCE}
    for section in ('inference', 'train'):
        assert report[section]['mm_peak_gflops'] > 0 and report[section]['mm_shapes_gflops'] > 0
        assert set(report[section]['results']) == libs
        for r in report[section]['results'].values():
            rounds = report['args']['rounds' if section == 'inference' else 'train_rounds']
            assert len(r['times_s']) == rounds and r['best_s'] <= r['median_s']
            keys = ('best_s', 'img_per_s', 'gflops_per_s', 'roofline_fraction')
            for key in (*keys, 'shapes_roofline_fraction'):
                assert math.isfinite(r[key]) and r[key] > 0, (section, key)
            assert r['over_mmdeit_best'] > 0 and r['over_mmdeit_paired'] > 0
    distill = report['distillation']['results']
    assert {'with_teacher', 'without_teacher', 'teacher_forward', 'teacher_in_step'} == set(distill)
    assert len(distill['teacher_in_step']['times_s']) == 1  # the warm-up round left out
    assert {'matmul', 'attention'} <= set(report['profile_inference']['percent'])
    assert sum(report['profile_train']['percent'].values()) == pytest.approx(100)


def test_the_libraries_compute_the_same_logits(report):
    assert max(report['parity_max_abs_diff'].values()) < 1e-4


def test_flops_are_flop_counter_mode_counts(report):
    """The per-op counts are FlopCounterMode's: torch's own table, plus the CPU SDPA ops."""
    args = benchmark.parse_args(ARGV)
    timm_model = deit_models.build_models(args, ablation=False)['timm'].eval()
    x = torch.randn(args.infer_batch, 3, 32, 32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        timm_model.predict(x)  # torch's table alone: CPU SDPA is not in it
    result = report['inference']['results']['timm']
    by_op = result['flops_by_op']
    assert result['flops_per_image'] * args.infer_batch == sum(by_op.values())
    sdpa = by_op.pop('aten._scaled_dot_product_flash_attention_for_cpu')
    assert sdpa > 0 and sum(by_op.values()) == counter.get_total_flops()


def test_mmdeits_kernels_are_counted_by_the_ops_they_replace():
    """bf16 autocast inference: mmdeit's C++ kernels (pybind calls FlopCounterMode cannot see;
    on AMX the attention and the linears) are off while counting, so its FLOPs are those of the
    ops they replace: the same count as with the switch off, the attention's products in it;
    the switch is restored."""
    from mmdeit.models.utils import cpu_kernels

    args = benchmark.parse_args(ARGV)
    model = deit_models.build_models(args, ablation=False)['mmdeit'].eval()
    x = torch.randn(2, 3, 32, 32)

    def predict():
        with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
            model.predict(x)

    switch = cpu_kernels.USE_CPU_KERNELS
    counted = deit_models.count_flops(predict)
    assert cpu_kernels.USE_CPU_KERNELS is switch
    try:
        cpu_kernels.USE_CPU_KERNELS = False
        with FlopCounterMode(display=False, custom_mapping=deit_models.flop_formulas()) as mode:
            predict()
    finally:
        cpu_kernels.USE_CPU_KERNELS = switch
    assert counted['total'] == mode.get_total_flops() > 0
    assert any('bmm' in op or 'scaled_dot' in op for op in counted['by_op'])  # the attention


def _linear_flops(by_op: dict) -> int:
    return sum(n for op, n in by_op.items() if 'conv' not in op and 'scaled_dot' not in op)


def test_mmdeit_executes_no_more_flops_than_its_peers(report):
    for section in ('inference', 'train'):
        res = report[section]['results']
        ours = res['mmdeit']['flops_per_image']
        assert 0 < ours <= min(res[peer]['flops_per_image'] for peer in PEERS), section
        # its linears are counted, the oneDNN ones of inference included: it skips few rows
        linear = {name: _linear_flops(r['flops_by_op']) for name, r in res.items()}
        assert linear['mmdeit'] > 0.5 * linear['timm'], section


def test_gemm_shapes_are_the_encoders_linears(report):
    """qkv, proj, fc1, fc2 at the batch's tokens; their FLOPs over the layers, less the rows the
    last layer leaves out (all but the cls and dist tokens, after its qkv GEMM), are the
    reference's linears in the encoder (the head's linear is the rest)."""
    args = benchmark.parse_args(ARGV)
    model = deit_models.build_models(args, ablation=True)[deit_models.REFERENCE]
    batch = args.infer_batch
    m = batch * ((32 // 8) ** 2 + 2)  # 16 patches, cls and dist tokens
    assert deit_models.gemm_shapes(model, batch) == [
        (m, 32, 96),
        (m, 32, 32),
        (m, 32, 64),
        (m, 64, 32),
    ]
    encoder = 2 * sum(m * k * n for m, k, n in deit_models.gemm_shapes(model, batch)) * 2  # layers
    encoder -= 2 * (m - batch * 2) * (32 * 32 + 32 * 64 + 64 * 32)  # last proj, fc1, fc2 rows
    by_op = report['inference']['results'][deit_models.REFERENCE]['flops_by_op']
    head = 2 * batch * 2 * 32 * 10  # two heads: (B, 32) x (32, 10) each
    patch_embed = 2 * batch * 16 * (3 * 8 * 8) * 32  # the patch projection (a conv)
    linear = sum(n for op, n in by_op.items() if 'scaled_dot' not in op)
    assert linear == encoder + head + patch_embed, by_op


def test_the_ablation_runs_mmdeit_with_its_fast_path_off(report):
    for section in ('inference', 'train'):
        res = report[section]['results']
        reference = res[deit_models.REFERENCE]
        # the peers' work but the last layer's unread rows (after its whole qkv GEMM); more
        # than mmdeit's (q's rows alone in the last layer; skipped samples in training)
        assert reference['flops_per_image'] < res['timm']['flops_per_image']
        assert reference['flops_per_image'] > res['mmdeit']['flops_per_image']


def test_the_reference_computes_what_mmdeit_computes():
    args = benchmark.parse_args([*ARGV, '--drop-path-rate', '0.5'])
    models = deit_models.build_models(args)
    fast, reference = models['mmdeit'], models[deit_models.REFERENCE]
    assert fast.backbone.fast_path and not reference.backbone.fast_path
    assert isinstance(fast.backbone.layers[0], FastTransformerEncoderLayer)
    assert not isinstance(reference.backbone.layers[0], FastTransformerEncoderLayer)
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval().predict(x), reference.eval().predict(x))
    train_logits = []
    for model in (fast, reference):  # the same stochastic depth draws
        torch.manual_seed(0)
        train_logits.append(model.train().logits(x))
    torch.testing.assert_close(*train_logits)


def test_memory_of_a_step_in_this_process():
    args = benchmark.parse_args(ARGV)
    row = step_memory.memory_child(dict(arch=TINY, with_cp=True, args=vars(args)))
    assert row['with_cp'] is True and row['batch'] == 2
    assert row['peak_mb'] > 0 and row['step_increase_mb'] >= 0 and row['step_s'] > 0
    assert row['tensor_peak_mb'] > 0


@pytest.mark.parametrize(
    'argv, match',
    [
        (['--rounds', '0'], '--rounds must be >= 1, got 0'),
        (['--warmup', '-1'], '--warmup must be >= 0'),
        (['--memory-jobs', '0'], '--memory-jobs must be >= 1'),
        (['--mm-size', '0'], '--mm-size must be >= 1, got 0'),
        (['--settle', '-0.5'], '--settle must be >= 0, got -0.5'),
    ],
)
def test_bad_counts_are_refused_naming_the_flag(argv, match):
    with pytest.raises(ValueError, match=match):
        benchmark.main(argv)


def test_profile_categories():
    cases = {
        'mkldnn::_linear_pointwise': 'matmul',
        'aten::addmm_': 'matmul',
        'sm90_xmma_gemm_bf16bf16_bf16f32': 'matmul',
        'aten::_scaled_dot_product_flash_attention_for_cpu': 'attention',
        'aten::bmm': 'attention',
        'aten::_softmax_backward_data': 'attention',
        'aten::convolution_backward': 'conv',
        'aten::gelu_backward': 'gelu',
        'aten::native_layer_norm': 'layer_norm',
        'aten::copy_': 'copy',
        'aten::add_': 'other',
    }
    for name, category in cases.items():
        assert op_profile.op_category(name) == category, name


def test_bf16_runs_with_one_attention_kernel(tmp_path):
    """``--dtype bf16`` (autocast) and ``bf16-model`` (the models cast) with ``--sdpa flash``,
    one command: a report per dtype."""
    argv = [*ARGV[:-2], '--teacher', 'none', '--no-ablation', '--sdpa', 'flash']
    argv += ['--dtype', 'bf16', 'bf16-model', '--out', str(tmp_path / 'r.json')]
    reports = benchmark.main(argv)
    assert list(reports) == ['bf16', 'bf16-model']
    assert json.loads((tmp_path / 'r.json').read_text()).keys() == reports.keys()
    for dtype, report in reports.items():
        assert report['machine']['dtype'] == dtype and report['machine']['sdpa'] == 'flash'
        for section in ('inference', 'train'):
            assert report[section]['mm_peak_gflops'] > 0
            for r in report[section]['results'].values():
                assert math.isfinite(r['best_s']) and r['flops_per_image'] > 0


def test_each_timed_call_starts_after_the_pause(monkeypatch):
    """``--settle``: a pause before every call of every round (warm-up included), so no call
    starts while the previous one's threads still spin; the default 0.1 s. The order is drawn
    anew for each round, the same for the same seed and section."""
    assert benchmark.parse_args([]).settle == 0.1
    events = []
    monkeypatch.setattr(benchmark.time, 'sleep', lambda s: events.append(s))
    args = benchmark.parse_args([*ARGV[:-2], '--settle', '0.25', '--warmup', '1'])
    args.order_seed = 1  # fixed: the assertions below hold for every draw of this seed
    fns = {name: lambda name=name: events.append(name) for name in ('a', 'b', 'c')}
    res = benchmark.run_rounds(args, fns, 2, 'test')
    assert events[0::2] == [0.25] * 9  # 3 rounds of 3 calls, each after a pause
    order = events[1::2]
    assert all(sorted(order[i : i + 3]) == ['a', 'b', 'c'] for i in (0, 3, 6))  # each once
    assert all(len(r['times_s']) == 2 for r in res.values())
    events.clear()
    benchmark.run_rounds(args, fns, 2, 'test')
    assert events[1::2] == order  # seeded
    events.clear()
    benchmark.run_rounds(args, fns, 2, 'other section')
    assert events[1::2] != order  # each section its own orders
    events.clear()
    args.rounds, args.warmup = 30, 0
    benchmark.run_rounds(args, fns, 30, 'test')
    firsts = set(events[1::6])  # the first call of each round
    assert firsts == {'a', 'b', 'c'}  # not always the same


def test_each_run_draws_its_own_order_seed():
    """Without ``--order-seed`` a run draws one (kept in ``args``, so in the report): two runs
    do not repeat one sequence of orders; given, it is kept."""
    seeds = {benchmark.parse_args([]).order_seed for _ in range(5)}
    assert len(seeds) > 1 and all(isinstance(s, int) for s in seeds)
    assert benchmark.parse_args(['--order-seed', '7']).order_seed == 7
    assert benchmark.parse_args([]).seed == 0  # the weights and inputs stay reproducible


def test_mm_size_defaults_to_2048_on_cpu():
    assert benchmark.parse_args([]).mm_size == 2048
    assert benchmark.parse_args(['--mm-size', '64']).mm_size == 64


def test_deployment_peers_join_the_inference_section(tmp_path):
    """``--compile default --onnxruntime``: torch.compile of mmdeit and timm and ONNX Runtime on
    mmdeit's export are timed with the eager libraries, each computing its eager model's
    output, counted with its eager model's FLOPs; the training step stays eager."""
    argv = [*ARGV[:-2], '--teacher', 'none', '--no-ablation', '--compile', 'default']
    report = benchmark.main([*argv, '--onnxruntime', '--out', str(tmp_path / 'r.json')])
    peers = {'mmdeit compile (default)', 'timm compile (default)', 'onnxruntime (fp32)'}
    inference = report['inference']['results']
    assert set(inference) == {'mmdeit', *PEERS, *peers}
    assert set(report['train']['results']) == {'mmdeit', *PEERS}
    assert set(report['peers_max_abs_diff']) == peers
    assert max(report['peers_max_abs_diff'].values()) < 1e-4
    flops = {name: r['flops_per_image'] for name, r in inference.items()}
    assert flops['mmdeit compile (default)'] == flops['mmdeit']
    assert flops['timm compile (default)'] == flops['timm']
    # ONNX Runtime runs the exported plain path: its last layer without the unread rows, but
    # with q of every token (one qkv GEMM), so between mmdeit's and timm's
    assert flops['mmdeit'] < flops['onnxruntime (fp32)'] < flops['timm']
    for name in peers:
        assert math.isfinite(inference[name]['shapes_roofline_fraction'])


def test_prepack_ablation_joins_the_inference_section(tmp_path, monkeypatch):
    """``--prepack-ablation``: mmdeit once more in the inference rounds, its oneDNN linears on
    row-major weights (the switch off during its calls only), with mmdeit's FLOPs."""
    from mmdeit.models.utils import onednn_linear

    monkeypatch.setattr(onednn_linear, 'FP32_ONEDNN', onednn_linear._HAS_OP)  # AVX-512's choice
    seen = []
    real = onednn_linear._whole_weight
    monkeypatch.setattr(
        onednn_linear,
        '_whole_weight',
        lambda *a: seen.append(onednn_linear.PREPACK) or real(*a),
    )
    argv = [*ARGV[:-2], '--teacher', 'none', '--no-ablation', '--prepack-ablation']
    prepack = onednn_linear.PREPACK
    report = benchmark.main([*argv, '--out', str(tmp_path / 'r.json')])
    inference = report['inference']['results']
    assert set(inference) == {'mmdeit', *PEERS, benchmark.NO_PREPACK}
    assert set(report['train']['results']) == {'mmdeit', *PEERS}
    mmdeit, ablation = inference['mmdeit'], inference[benchmark.NO_PREPACK]
    assert ablation['flops_per_image'] == mmdeit['flops_per_image']
    assert onednn_linear.PREPACK is prepack  # restored
    if prepack:  # both forms ran
        assert set(seen) == {True, False}


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--compile', 'fast'], "invalid choice: 'fast'"),
        (['--compile'], 'expected at least one argument'),
    ],
)
def test_bad_compile_modes_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(argv)
    err = capsys.readouterr().err
    assert '--compile' in err and message in err


def test_cuda_graphs_on_the_cpu_are_refused():
    """``--compile reduce-overhead`` replays CUDA graphs: with ``--device cpu`` it is refused."""
    with pytest.raises(ValueError, match='reduce-overhead replays CUDA graphs.*--device cuda'):
        benchmark.parse_args(['--compile', 'default', 'reduce-overhead'])


def test_onnxruntime_on_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    with pytest.raises(ValueError, match='--onnxruntime runs on the CPU only'):
        benchmark.parse_args(['--device', 'cuda', '--onnxruntime'])


def test_as_a_user_runs_it_with_glibc_malloc(tmp_path):
    """The script as a subprocess from a folder outside the checkout, inference only: the
    table printed, the report written, glibc's thresholds left alone (process-wide: only a
    fresh process shows what the tool set)."""
    out = tmp_path / 'report.json'
    argv = [*ARGV, '--train-rounds', '1', '--teacher', 'none', '--no-ablation']
    run = subprocess.run(
        [sys.executable, str(TOOL), *argv, '--malloc', 'glibc', '--out', str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "at the model's GEMM shapes: mmdeit at" in run.stdout
    report = json.loads(out.read_text())
    assert report['machine']['malloc'] == dict(option='glibc', kept=None)
    assert set(report['inference']['results']) == {'mmdeit', *PEERS}
