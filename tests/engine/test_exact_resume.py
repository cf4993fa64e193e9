"""Resuming repeats the uninterrupted run bit for bit (RNGStateHook + the exact-resume loop):
the digits DeiT with random crop/rotation, Mixup/CutMix and drop path, resumed at an epoch
boundary and mid-epoch, with 0 and 2 data loader workers. Over 2 gloo processes (a Slurm run
resumed mid-epoch by two torchrun "machines"): tests/tools/test_multi_node.py."""

from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook

import mmdeit  # noqa: F401  (registers modules and the mmdeit:: configs)
from mmdeit.engine import RNGStateError, safe_load
from tools.analysis.dist_exit_loop import EPOCHS, digits_config
from tools.train import main as train_main

ITERS = 3  # 48 train images, batch 16 (2 x 8 over two ranks)
WARNING = 'holds no random state'
_config = digits_config


@pytest.fixture(scope='module')
def one_thread():
    """One intra-op thread, as the subprocesses have: the same float sums in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(config: str, work_dir: Path, name: str, *options: str) -> None:
    # mmengine shares the logger and MessageHub of runners with the same experiment name.
    train_main([config, '--work-dir', str(work_dir), *options, '--cfg-options',
                f'experiment_name={name}'])  # fmt: skip


def _weights(path: Path) -> dict:
    return safe_load(str(path))['state_dict']


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _resume(config: str, ckpt: Path, work_dir: Path, name: str) -> str:
    _train(config, work_dir, name, '--resume', str(ckpt))
    return '\n'.join(p.read_text() for p in work_dir.glob('*/*.log'))


@pytest.fixture(scope='module', params=[0, 2], ids=['workers0', 'workers2'])
def reference(request, tmp_path_factory, one_thread):
    """An uninterrupted 3-epoch run; its checkpoints are those an interrupted run wrote."""
    folder = tmp_path_factory.mktemp(f'w{request.param}')
    config = _config(folder, request.param)
    _train(config, folder / 'reference', f'reference_w{request.param}')
    return config, folder


@pytest.mark.parametrize('ckpt', ['epoch_1.pth', 'iter_4.pth'])
def test_resumed_run_ends_with_the_uninterrupted_weights(reference, ckpt, one_thread):
    config, folder = reference
    source = folder / 'reference' / ckpt
    meta = safe_load(str(source))['meta']
    done = meta['iter'] - meta['epoch'] * ITERS  # batches of the epoch trained before it
    assert done == {'epoch_1.pth': 0, 'iter_4.pth': 1}[ckpt]
    work_dir = folder / f'resumed_{ckpt}'
    log = _resume(config, source, work_dir, f'resumed_{folder.name}_{ckpt}')
    assert WARNING not in log
    if done:
        assert f'reading its first {done} of {ITERS} batches again' in log
        assert f'Epoch(train) [{meta["epoch"] + 1}][{done + 1}/{ITERS}]' in log
    final = f'epoch_{EPOCHS}.pth'
    resumed, uninterrupted = _weights(work_dir / final), _weights(folder / 'reference' / final)
    assert _max_diff(resumed, uninterrupted) == 0.0
    assert safe_load(str(work_dir / final))['meta']['iter'] == EPOCHS * ITERS


def test_checkpoint_holds_plain_rng_state_read_by_the_safe_loader(reference):
    _, folder = reference
    state = safe_load(str(folder / 'reference' / 'iter_4.pth'))['rng_state']  # weights_only
    assert state['format'] == 1 and state['world_size'] == len(state['ranks']) == 1
    assert (state['epoch'], state['iter']) == (1, 4)  # as the checkpoint's meta
    entry = state['ranks'][0]
    assert {'current', 'epoch_start', 'sampler_seed', 'sampler_epoch', 'worker_seed'} <= set(entry)
    assert entry['sampler_seed'] == 0 and entry['sampler_epoch'] == 1

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str, torch.Tensor))

    assert plain(state)


def test_old_checkpoint_resumes_with_a_warning(reference, tmp_path, one_thread):
    config, folder = reference
    if folder.name.startswith('w2'):
        pytest.skip('one loader setting is enough')
    ckpt = safe_load(str(folder / 'reference' / 'iter_4.pth'))
    del ckpt['rng_state']
    torch.save(ckpt, tmp_path / 'old.pth')
    log = _resume(config, tmp_path / 'old.pth', tmp_path / 'resumed', 'old_ckpt')
    assert WARNING in log and 'will not repeat the uninterrupted run exactly' in log
    # Without the states the continuation differs: the test above is not vacuous.
    final = f'epoch_{EPOCHS}.pth'
    resumed = _weights(tmp_path / 'resumed' / final)
    assert _max_diff(resumed, _weights(folder / 'reference' / final)) > 0


@pytest.mark.parametrize(
    'field',
    [r'rng_state\.ranks\[0\]\.current\.numpy\.keys', r'rng_state\.iter: 3, but .* iteration 4'],
    ids=['corrupt', 'mismatched'],
)
def test_bad_rng_state_is_refused_naming_the_field(reference, field, tmp_path, one_thread):
    config, folder = reference
    if folder.name.startswith('w2'):
        pytest.skip('one loader setting is enough')
    ckpt = safe_load(str(folder / 'reference' / 'iter_4.pth'))
    if 'keys' in field:
        ckpt['rng_state']['ranks'][0]['current']['numpy']['keys'] = torch.zeros(5).long()
    else:  # the states of another checkpoint
        ckpt['rng_state'] = safe_load(str(folder / 'reference' / 'iter_3.pth'))['rng_state']
    torch.save(ckpt, tmp_path / 'bad.pth')
    with pytest.raises(RNGStateError, match=field):
        _train(config, tmp_path / 'resumed', 'bad_ckpt', '--resume', str(tmp_path / 'bad.pth'))


def test_iter_based_loop_saves_and_restores_the_states(image_folder, tmp_path, engine):
    """Not exact (docs/resume.md), but an IterBasedTrainLoop run saves the states and resumes
    with them, set at its first iteration."""
    from mmengine.runner import Runner

    from .test_checkpoint_loader import _runner_cfg

    hooks = [dict(type='RNGStateHook')]
    Runner.from_cfg(_runner_cfg(image_folder, tmp_path / 'full', 3, custom_hooks=hooks)).train()
    ckpt = tmp_path / 'full' / 'iter_2.pth'
    state = safe_load(str(ckpt))['rng_state']
    assert state['iter'] == 2
    saved = state['ranks'][0]
    assert saved['epoch_start'] is None  # not the exact-resume loop
    cfg = _runner_cfg(
        image_folder, tmp_path / 'resumed', 3, resume=True, load_from=str(ckpt), custom_hooks=hooks
    )
    resumed = Runner.from_cfg(cfg)
    seen = []
    resumed.register_hook(_Spy(seen), priority='LOWEST')
    resumed.train()
    assert resumed.iter == 3
    assert torch.equal(seen[0], saved['current']['torch'])  # set before the first iteration


class _Spy(Hook):
    """Records torch's RNG state at each ``before_train_iter`` (after RNGStateHook's)."""

    def __init__(self, seen: list) -> None:
        self.seen = seen

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.seen.append(torch.get_rng_state())
