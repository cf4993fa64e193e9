"""The torch.distributed variables of a Slurm task, as mmengine's ``slurm`` launcher sets them."""

import os
import subprocess
from typing import Dict, Mapping, Optional

__all__ = ['slurm_environment', 'first_slurm_host']

DEFAULT_PORT = '29500'  # mmengine's (and torch's) default MASTER_PORT


def _integer(environ: Mapping[str, str], name: str, minimum: int) -> int:
    value = environ.get(name)
    if value is None or value == '':
        raise KeyError(
            f'launcher slurm: the environment variable {name} is not set; run the tool in '
            'a Slurm job step (srun, as tools/slurm_train.sh does)'
        )
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f'launcher slurm: {name}={value!r} is not an integer') from None
    if number < minimum:
        raise ValueError(f'launcher slurm: {name}={value!r} must be at least {minimum}')
    return number


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list, from ``scontrol show hostnames NODELIST``.

    Args:
        nodelist: A Slurm host list, such as ``SLURM_NODELIST`` (``node[01-04]``).

    Returns:
        The first host name ``scontrol`` prints.

    Raises:
        RuntimeError: If ``scontrol`` is not on ``PATH``, fails or prints no host; the message
            says to set ``MASTER_ADDR`` instead.
    """
    command = ['scontrol', 'show', 'hostnames', nodelist]
    fix = "set MASTER_ADDR to the first node's address"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise RuntimeError(
            'launcher slurm: MASTER_ADDR is not set and scontrol is not on PATH to read the '
            f'first host of SLURM_NODELIST={nodelist!r}; {fix}'
        ) from None
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        raise RuntimeError(
            f'launcher slurm: MASTER_ADDR is not set and `{" ".join(command)}` exited '
            f'{proc.returncode} with no host ({proc.stderr.strip()!r}); {fix}'
        )
    return hosts[0]


def slurm_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` of a task.

    As mmengine's ``init_dist('slurm')`` computes them: the rank is ``SLURM_PROCID``, the world
    size ``SLURM_NTASKS``, the local rank ``SLURM_LOCALID`` (0 when absent: without GPUs it
    picks no device), ``MASTER_ADDR`` is kept if set, else the first host of
    ``SLURM_NODELIST`` (:func:`first_slurm_host`), and ``MASTER_PORT`` is kept if set, else
    29500.

    Args:
        environ: The task's environment. Defaults to ``os.environ``.

    Returns:
        The five variables, as strings.

    Raises:
        KeyError: If ``SLURM_PROCID``, ``SLURM_NTASKS`` or ``SLURM_NODELIST`` is missing (the
            message names it).
        ValueError: If one of them is not a valid number, or the rank is not below the tasks.
        RuntimeError: If ``MASTER_ADDR`` is unset and ``scontrol`` cannot name the first host.
    """
    environ = os.environ if environ is None else environ
    rank = _integer(environ, 'SLURM_PROCID', 0)
    world_size = _integer(environ, 'SLURM_NTASKS', 1)
    if rank >= world_size:
        raise ValueError(
            f'launcher slurm: SLURM_PROCID={rank} must be below SLURM_NTASKS={world_size}'
        )
    local_rank = _integer(environ, 'SLURM_LOCALID', 0) if 'SLURM_LOCALID' in environ else 0
    nodelist = environ.get('SLURM_NODELIST', '')
    if not nodelist:
        raise KeyError(
            'launcher slurm: the environment variable SLURM_NODELIST is not set; run the tool '
            'in a Slurm job step (srun, as tools/slurm_train.sh does)'
        )
    return dict(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=environ.get('MASTER_ADDR') or first_slurm_host(nodelist),
        MASTER_PORT=environ.get('MASTER_PORT') or DEFAULT_PORT,
    )
