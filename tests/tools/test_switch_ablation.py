"""tools/analysis/switch_ablation.py and ``benchmark.py --ablate``: each fast-path switch off
during its ablation's calls only, in the sections it changes. Not a timed test."""

import importlib

import pytest

from mmdeit.models.backbones import FastTransformerEncoderLayer
from tools.analysis import benchmark, switch_ablation
from tools.analysis.switch_ablation import SWITCHES, ablation_name, switched_off

from .test_benchmark import ARGV, PEERS


def _state() -> dict:
    """Whether each switch is off now."""
    out = {}
    for name, s in SWITCHES.items():
        out[name] = getattr(importlib.import_module(s.module), s.attribute) == s.off
    return out


@pytest.mark.parametrize('name', list(SWITCHES))
def test_each_switch_is_a_setting_of_the_fast_path(name):
    """The table names module attributes that exist, with an ``off`` of their type that differs
    from the default (a renamed switch fails here, not in a benchmark run on another host)."""
    s = SWITCHES[name]
    value = getattr(importlib.import_module(s.module), s.attribute)
    assert type(s.off) is type(value)
    assert set(s.sections) <= {'inference', 'train'} and s.sections
    assert s.doc


@pytest.mark.parametrize('name', list(SWITCHES))
def test_switched_off_restores_the_setting_also_after_an_error(name):
    s = SWITCHES[name]
    module = importlib.import_module(s.module)
    before, others = getattr(module, s.attribute), _state()
    with switched_off(name):
        assert _state() == {**others, name: True}  # this one off, the others untouched
    assert getattr(module, s.attribute) is before
    with pytest.raises(RuntimeError, match='boom'):
        with switched_off(name):
            raise RuntimeError('boom')
    assert getattr(module, s.attribute) is before


def test_ablations_take_the_switches_of_their_section():
    calls = []
    names = list(SWITCHES)
    infer = switch_ablation.ablations(names, lambda: calls.append(_state()) or 1, 'inference')
    train = switch_ablation.ablations(names, lambda: None, 'train')
    assert set(infer) == {ablation_name(n) for n in names if 'inference' in SWITCHES[n].sections}
    assert set(train) == {ablation_name(n) for n in names if 'train' in SWITCHES[n].sections}
    assert ablation_name('gemm-attention') in infer and ablation_name('gemm-attention') in train
    assert infer[ablation_name('prepack')]() == 1  # the function's result
    assert calls[-1]['prepack']


def test_benchmark_ablates_each_switch_in_its_sections(tmp_path, monkeypatch):
    """``--ablate`` every switch, bf16 autocast: each ablation in the sections its switch
    changes, counted with mmdeit's FLOPs; mmdeit's layers ran with that switch off (and the
    others as they were) in its calls, and every switch is as it was afterwards."""
    seen = []
    forward = FastTransformerEncoderLayer._forward

    def spy(self, *args, **kwargs):
        seen.append(tuple(sorted(_state().items())))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FastTransformerEncoderLayer, '_forward', spy)
    before = _state()
    argv = [*ARGV[:-2], '--teacher', 'none', '--no-ablation', '--dtype', 'bf16']
    report = benchmark.main([*argv, '--ablate', *SWITCHES, '--out', str(tmp_path / 'r.json')])
    assert _state() == before
    for section in ('inference', 'train'):
        results = report[section]['results']
        wanted = {ablation_name(n) for n, s in SWITCHES.items() if section in s.sections}
        assert set(results) == {'mmdeit', *PEERS, *wanted}
        for name in wanted:
            assert results[name]['flops_per_image'] == results['mmdeit']['flops_per_image']
    assert tuple(sorted(before.items())) in seen  # mmdeit itself
    for name in SWITCHES:  # FP32_ONEDNN is off by default on AVX2-only CPUs
        one_off = {**before, name: True}
        assert tuple(sorted(one_off.items())) in seen, name


def test_prepack_ablation_is_ablate_prepack():
    assert benchmark.parse_args(['--prepack-ablation']).ablate == ['prepack']
    args = benchmark.parse_args(['--ablate', 'prepack', 'q-scale-fold', '--prepack-ablation'])
    assert args.ablate == ['prepack', 'q-scale-fold']
    assert benchmark.NO_PREPACK == 'mmdeit (no prepack)'


def test_an_unknown_switch_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--ablate', 'flash'])
    assert "--ablate: invalid choice: 'flash'" in capsys.readouterr().err
