"""tools/analysis/launch_profile.py on a tiny arch on the CPU: the report's fields and the
refused arguments. Not a timed test: nothing here compares speeds."""

import json

import pytest

from tools.analysis import deit_models, launch_profile

TINY = json.dumps(dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64))
ARGV = ['--device', 'cpu', '--arch', TINY, '--img-size', '32', '--patch-size', '8']
ARGV += ['--num-classes', '10', '--batch', '2', '--rounds', '2', '--profiled-calls', '1']


@pytest.mark.parametrize('dtype', ['fp32', 'bf16'])
def test_every_library_is_timed_and_profiled(tmp_path, dtype):
    out = tmp_path / 'report.json'
    report = launch_profile.main([*ARGV, '--dtype', dtype, '--out', str(out)])
    assert json.loads(out.read_text())['results'].keys() == report['results'].keys()
    libs = ('mmdeit', 'timm', deit_models.REFERENCE)
    assert list(report['results']) == [f'{lib} [eager]' for lib in libs]
    for r in report['results'].values():
        assert len(r['times_s']) == 2 and 0 < r['host_s'] <= r['wall_s']
        assert r['launches'] > 0 and r['busy_s'] > 0
        assert 0 < len(r['host_ops']) <= 8 and all(op['self_s'] > 0 for op in r['host_ops'])


@pytest.mark.parametrize(
    'argv, message',
    [
        (['--compile', 'reduce-overhead'], 'reduce-overhead replays CUDA graphs.*--device cuda'),
        (['--rounds', '0'], '--rounds must be >= 1, got 0'),
        (['--batch', '0'], '--batch must be >= 1, got 0'),
        (['--host-ops', '-1'], '--host-ops must be >= 0, got -1'),
        (['--train', '--compile', 'default'], '--train profiles eager training steps'),
    ],
)
def test_bad_arguments_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        launch_profile.parse_args([*ARGV, *argv])


def test_libs_chooses_the_libraries():
    report = launch_profile.main([*ARGV, '--libs', 'timm', 'mmdeit', '--host-ops', '0'])
    assert list(report['results']) == ['timm [eager]', 'mmdeit [eager]']
    assert all(r['host_ops'] == [] for r in report['results'].values())


def test_train_profiles_training_steps_that_change_the_weights():
    """``--train``: each library's call is a training step (its weights change at each)."""
    args = launch_profile.parse_args([*ARGV, '--train', '--libs', 'mmdeit', 'timm'])
    models = deit_models.build_models(args, ablation=True)
    fns = launch_profile.call_fns(args, models)
    assert list(fns) == ['mmdeit [train]', 'timm [train]']
    for name, model in zip(fns, (models['mmdeit'], models['timm']), strict=True):
        assert model.training
        before = [p.detach().clone() for p in model.parameters()]
        fns[name]()
        assert all(not p.equal(b) for p, b in zip(model.parameters(), before, strict=True))
    report = launch_profile.main([*ARGV, '--train', '--libs', 'timm', '--host-ops', '2'])
    (r,) = report['results'].values()
    assert r['launches'] > 0 and 0 < r['host_s'] <= r['wall_s'] and len(r['host_ops']) == 2
