"""Distributed training on CPUs (gloo) with mmengine's ``pytorch`` (torchrun) and ``slurm``
launchers."""

import datetime
import inspect
import logging
import os

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

from .slurm_environment import slurm_environment

__all__ = ['setup_cpu_distributed']


def _no_buffer_sync_in_forward() -> dict:
    """DDP's argument that stops it broadcasting the buffers in every forward, as mmengine's
    default wrapper does (``broadcast_buffers=False``): ``forward_sync_buffers=False`` where DDP
    takes it (torch 2.13 deprecates ``broadcast_buffers`` with a FutureWarning in every
    process), which still broadcasts rank 0's buffers once at wrapping, as it does the
    parameters (the same values here: every rank builds the model from the same seed and
    checkpoints); ``broadcast_buffers=False`` on older torch."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    key = 'forward_sync_buffers' if 'forward_sync_buffers' in params else 'broadcast_buffers'
    return {key: False}


def setup_cpu_distributed(cfg: Config) -> bool:
    """Make a torchrun (``launcher='pytorch'``) or Slurm (``'slurm'``) run work without CUDA.

    mmengine 0.10's pytorch and slurm launchers call ``torch.cuda.set_device(LOCAL_RANK)``
    before they initialise the process group, and wrap the model in
    ``DistributedDataParallel`` with ``device_ids=[LOCAL_RANK]``; both fail without a GPU.
    Without CUDA this function therefore initialises the process group itself with the gloo
    backend (mmengine's ``Runner`` then keeps it) and sets ``model_wrapper_cfg`` to
    ``MMDistributedDataParallel`` without device ids. Under Slurm it first sets ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from the task's
    Slurm variables as mmengine does (:func:`~mmdeit.engine.slurm_environment.slurm_environment`:
    a missing variable is an error naming it). With CUDA, another launcher, or a process group
    already initialised, it does nothing.

    Call it after the command-line options are merged and before ``Runner.from_cfg(cfg)``.

    Args:
        cfg: The full runner config; ``cfg.launcher``, ``cfg.env_cfg.dist_cfg`` (``backend``,
            which must be gloo without CUDA and is switched to it with a warning otherwise,
            and ``timeout`` in seconds), ``cfg.model_wrapper_cfg`` and
            ``cfg.find_unused_parameters`` are read; the latter two and the backend are set.

    Returns:
        True if it initialised the process group, else False.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher not in ('pytorch', 'slurm') or torch.cuda.is_available():
        return False
    if not torch_dist.is_available():
        raise RuntimeError(f'launcher {launcher} needs torch.distributed, which this torch lacks')
    if torch_dist.is_initialized():
        return False
    if launcher == 'slurm':
        os.environ.update(slurm_environment())
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = dict(env_cfg.get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'gloo')
    if backend != 'gloo':
        print_log(
            f'env_cfg.dist_cfg.backend={backend!r} needs GPUs and none is available: using '
            "'gloo' on the CPUs (set --cfg-options env_cfg.dist_cfg.backend=gloo to silence "
            'this).',
            logger='current',
            level=logging.WARNING,
        )
    timeout = dist_cfg.pop('timeout', None)
    if timeout is not None:
        dist_cfg['timeout'] = datetime.timedelta(seconds=timeout)
    # RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT: torchrun's environment, or Slurm's above.
    torch_dist.init_process_group(backend='gloo', **dist_cfg)
    env_cfg.setdefault('dist_cfg', {})
    env_cfg['dist_cfg']['backend'] = 'gloo'

    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            **_no_buffer_sync_in_forward(),
            find_unused_parameters=cfg.get('find_unused_parameters', False),
            device_ids=None,
        )
    elif wrapper.get('type', 'MMDistributedDataParallel') in (
        'MMDistributedDataParallel',
        'DistributedDataParallel',
    ):
        wrapper.setdefault('device_ids', None)
    return True
