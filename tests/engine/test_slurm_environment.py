"""slurm_environment: a Slurm task's variables as torch.distributed's, as mmengine reads them;
setup_cpu_distributed with launcher 'slurm' on a machine without CUDA."""

import os

import pytest
import torch
import torch.distributed as torch_dist
from mmengine.config import Config

from mmdeit.engine import setup_cpu_distributed
from mmdeit.engine.slurm_environment import slurm_environment
from tools.analysis.dist_exit_loop import free_port
from tools.analysis.slurm_standin import install

TASK = dict(SLURM_PROCID='3', SLURM_NTASKS='8', SLURM_LOCALID='1', SLURM_NODELIST='gpu[07-08]')
TORCH_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """The stand-in ``scontrol`` first on PATH."""
    monkeypatch.setenv('PATH', f'{install(tmp_path / "bin")}:/usr/bin:/bin')


def test_task_variables_become_torch_distributed_ones(scontrol):
    env = slurm_environment(dict(TASK))
    assert env == dict(
        RANK='3', WORLD_SIZE='8', LOCAL_RANK='1', MASTER_ADDR='gpu07', MASTER_PORT='29500'
    )


def test_master_address_and_port_in_the_environment_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))  # no scontrol: it must not be needed
    env = slurm_environment(dict(TASK, MASTER_ADDR='10.0.0.5', MASTER_PORT='29999'))
    assert (env['MASTER_ADDR'], env['MASTER_PORT']) == ('10.0.0.5', '29999')


def test_no_local_id_means_local_rank_0(scontrol):
    task = {k: v for k, v in TASK.items() if k != 'SLURM_LOCALID'}
    assert slurm_environment(task)['LOCAL_RANK'] == '0'


@pytest.mark.parametrize('name', ['SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'])
def test_missing_variable_is_named(name, scontrol):
    task = {k: v for k, v in TASK.items() if k != name}
    with pytest.raises(KeyError, match=f'{name} is not set.*srun'):
        slurm_environment(task)


@pytest.mark.parametrize(
    'change, match',
    [
        (dict(SLURM_NTASKS='eight'), "SLURM_NTASKS='eight' is not an integer"),
        (dict(SLURM_LOCALID='-1'), "SLURM_LOCALID='-1' must be at least 0"),
        (dict(SLURM_PROCID='8'), 'SLURM_PROCID=8 must be below SLURM_NTASKS=8'),
    ],
)
def test_bad_values_are_named(change, match, scontrol):
    with pytest.raises(ValueError, match=match):
        slurm_environment(dict(TASK, **change))


def test_without_scontrol_and_master_addr_the_error_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path))
    with pytest.raises(RuntimeError, match=r'MASTER_ADDR is not set and scontrol is not on PATH'):
        slurm_environment(dict(TASK))


def test_failing_scontrol_is_reported(scontrol):
    with pytest.raises(RuntimeError, match=r'scontrol show hostnames .* exited 1'):
        slurm_environment(dict(TASK, SLURM_NODELIST='bad[x-y]'))


@pytest.mark.skipif(torch.cuda.is_available(), reason='only without CUDA')
def test_setup_cpu_distributed_under_slurm_initialises_gloo(monkeypatch, scontrol):
    for name in TORCH_VARS:
        monkeypatch.delenv(name, raising=False)  # restored after the test
    task = dict(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_LOCALID='0', SLURM_NODELIST='127.0.0.1')
    for name, value in dict(task, MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)
    cfg = Config(dict(launcher='slurm', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    try:
        assert setup_cpu_distributed(cfg) is True
        assert torch_dist.get_backend() == 'gloo' and torch_dist.get_world_size() == 1
    finally:
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    assert {k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR')} == dict(
        RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1'
    )
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
