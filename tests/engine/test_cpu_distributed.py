"""setup_cpu_distributed: torchrun's launcher 'pytorch' on a machine without CUDA."""

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config

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
