"""A finished distributed run destroys its process group (a live gloo group can abort the
process at exit with SIGABRT); a failed one leaves it alone. Through tools/train.py,
tools/test.py and DestroyProcessGroupHook, in a one-process gloo group as torchrun starts it."""

import gc

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

from mmdeit.engine import (
    DestroyProcessGroupHook,
    destroy_process_group,
    destroy_process_group_on_success,
    setup_cpu_distributed,
)
from tools import test as test_tool
from tools.analysis.dist_exit_loop import digits_config
from tools.train import main as train_main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='gloo on CPUs')

ONE_EPOCH = ['train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=16']
SMALL_VAL = ['val_dataloader.dataset.indices=8', 'test_dataloader.dataset.indices=8']


def _init_group() -> None:
    torch_dist.init_process_group('gloo')
    assert torch_dist.is_initialized()


@pytest.fixture
def no_automatic_gc():
    """Only explicit collections: what a tool leaves in reference cycles stays there."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _live_ddp() -> list:
    # type(), not isinstance: isinstance asks some objects for __class__, and torch's deprecated
    # `torch.distributed.reduce_op` answers with a FutureWarning
    return [o for o in gc.get_objects() if issubclass(type(o), DistributedDataParallel)]


def test_without_a_group_there_is_nothing_to_destroy():
    assert not torch_dist.is_initialized()
    assert destroy_process_group() is False
    with destroy_process_group_on_success():
        pass
    assert not torch_dist.is_initialized()


def test_the_group_is_destroyed_after_success_only(torchrun_env):
    _init_group()
    with pytest.raises(RuntimeError, match='a rank failed'):
        with destroy_process_group_on_success():
            raise RuntimeError('a rank failed')
    assert torch_dist.is_initialized()  # destroying it could hang on a peer in a collective
    with destroy_process_group_on_success():
        pass
    assert not torch_dist.is_initialized()


def test_train_and_test_tools_exit_without_a_process_group(torchrun_env, tmp_path):
    config = digits_config(tmp_path, batch_size=8)
    options = ['--cfg-options', *ONE_EPOCH, *SMALL_VAL, 'experiment_name=exit_train']
    train_main([config, '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'run'), *options])
    assert not torch_dist.is_initialized()

    checkpoint = str(tmp_path / 'run' / 'epoch_1.pth')
    options = ['--cfg-options', *SMALL_VAL, 'experiment_name=exit_test']
    test_tool.main(
        [config, checkpoint, '--launcher', 'pytorch', '--work-dir', str(tmp_path), *options]
    )
    assert not torch_dist.is_initialized()


def test_hook_destroys_the_group_after_the_run(torchrun_env, no_automatic_gc, tmp_path):
    """For a run another tool owns (mmdet's or mmseg's tools/train.py). The runner outlives the
    run there: the hook unwraps its model, so the DDP wrapper (which holds the group) is freed
    with the group."""
    cfg = Config.fromfile(digits_config(tmp_path, batch_size=8))
    cfg.train_cfg.max_epochs = 1
    cfg.train_dataloader.dataset.indices = 16
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.custom_hooks = [dict(type='DestroyProcessGroupHook')]
    cfg.update(launcher='pytorch', work_dir=str(tmp_path / 'hook'), experiment_name='exit_hook')
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    assert any(isinstance(hook, DestroyProcessGroupHook) for hook in runner.hooks)
    assert runner.hooks[-1].__class__ is DestroyProcessGroupHook  # after every other after_run
    assert isinstance(runner.model, DistributedDataParallel)
    assert any(o is runner.model for o in _live_ddp())  # the helper sees a live wrapper
    runner.train()
    assert not torch_dist.is_initialized() and not _live_ddp()
    assert runner.model.__class__.__name__ == 'DistilledImageClassifier'  # the wrapped model


def test_the_tools_free_the_ddp_wrapper_with_the_group(torchrun_env, no_automatic_gc, tmp_path):
    """A DDP wrapper left alive holds the destroyed group and gloo's threads until interpreter
    teardown (where a rank can abort): the tools free it, through a collection, before the
    group is destroyed."""
    assert not _live_ddp()
    config = digits_config(tmp_path, batch_size=8)
    options = ['--cfg-options', *ONE_EPOCH, *SMALL_VAL, 'experiment_name=free_train']
    train_main([config, '--launcher', 'pytorch', '--work-dir', str(tmp_path / 'run'), *options])
    assert not torch_dist.is_initialized() and not _live_ddp()

    checkpoint = str(tmp_path / 'run' / 'epoch_1.pth')
    options = ['--cfg-options', *SMALL_VAL, 'experiment_name=free_test']
    test_tool.main(
        [config, checkpoint, '--launcher', 'pytorch', '--work-dir', str(tmp_path), *options]
    )
    assert not torch_dist.is_initialized() and not _live_ddp()
