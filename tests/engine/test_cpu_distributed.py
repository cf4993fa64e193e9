"""setup_cpu_distributed: torchrun's launcher 'pytorch' on a machine without CUDA."""

import inspect
import warnings

import pytest
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS

from mmdeit.engine import setup_cpu_distributed

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='only without CUDA')


def test_nccl_without_gpu_becomes_gloo_and_ddp_gets_no_device_ids(torchrun_env):
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60))))
    assert setup_cpu_distributed(cfg) is True
    assert torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo'
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert setup_cpu_distributed(cfg) is False  # already initialised: nothing to do


def test_the_wrapper_syncs_no_buffers_in_forward_without_a_deprecation_warning(torchrun_env):
    """mmengine's default: no buffer broadcast in each forward. torch 2.13's DDP warns about
    ``broadcast_buffers`` (in every process of every run): its successor is used there."""
    cfg = Config(dict(launcher='pytorch', env_cfg=dict(dist_cfg=dict(backend='gloo'))))
    assert setup_cpu_distributed(cfg) is True
    wrapper_cfg = cfg.model_wrapper_cfg.to_dict()
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    key = 'forward_sync_buffers' if 'forward_sync_buffers' in params else 'broadcast_buffers'
    assert wrapper_cfg[key] is False
    assert {'forward_sync_buffers', 'broadcast_buffers'} & wrapper_cfg.keys() == {key}
    wrapper_type = MODEL_WRAPPERS.get(wrapper_cfg.pop('type'))
    with warnings.catch_warnings():
        warnings.simplefilter('error', FutureWarning)
        model = wrapper_type(module=nn.Linear(2, 2), **wrapper_cfg)
    synced = getattr(model, 'forward_sync_buffers', getattr(model, 'broadcast_buffers', None))
    assert synced is False


def test_a_given_wrapper_keeps_its_settings(torchrun_env):
    cfg = Config(
        dict(
            launcher='pytorch',
            env_cfg=dict(dist_cfg=dict(backend='gloo')),
            model_wrapper_cfg=dict(type='MMDistributedDataParallel', find_unused_parameters=True),
        )
    )
    assert setup_cpu_distributed(cfg) is True
    assert cfg.model_wrapper_cfg.find_unused_parameters is True
    assert cfg.model_wrapper_cfg.device_ids is None


def test_other_launchers_are_left_alone():
    cfg = Config(dict(launcher='none', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert setup_cpu_distributed(cfg) is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl' and 'model_wrapper_cfg' not in cfg
    assert not torch_dist.is_initialized()
