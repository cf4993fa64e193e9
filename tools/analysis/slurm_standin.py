"""A local stand-in for Slurm's ``srun`` and ``scontrol show hostnames``, for tests and loops.

``install(folder)`` writes ``folder/srun`` and ``folder/scontrol``; with ``folder`` first on
``PATH``, ``tools/slurm_train.sh`` and ``tools/slurm_test.sh`` run as in a Slurm job, on this
machine. The stand-in ``srun`` parses the options those scripts pass (unknown ones are an
error), starts ``--ntasks`` copies of the command, each with the variables a Slurm task gets
(``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_NTASKS``, ``SLURM_NODELIST``,
``SLURM_JOB_ID``, ...), and returns the highest exit status; with ``--kill-on-bad-exit=1`` a
task that fails stops the others. The "nodes" are ``127.0.0.1``, ``127.0.0.2``, ... (all this
machine), so the first one, which mmengine's launcher takes as ``MASTER_ADDR``, is reachable.
When ``SRUN_STANDIN_RECORD`` names a file, each call appends its parsed options as a JSON line.
"""

import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

#: srun options the launchers use: long name -> (short name, whether it takes a value).
OPTIONS = {
    'partition': ('p', True),
    'job-name': ('J', True),
    'gres': (None, True),
    'ntasks': ('n', True),
    'ntasks-per-node': (None, True),
    'cpus-per-task': ('c', True),
    'kill-on-bad-exit': ('K', True),
    'time': ('t', True),
    'quotatype': (None, True),
}
SHORT = {short: name for name, (short, _) in OPTIONS.items() if short}


def parse_srun(args: List[str]) -> Tuple[Dict[str, str], List[str]]:
    """Split ``srun`` arguments into ``{option: value}`` and the command to run."""
    options, i = {}, 0
    while i < len(args) and args[i].startswith('-'):
        arg = args[i]
        if arg.startswith('--'):
            name, eq, value = arg[2:].partition('=')
        else:
            name, value, eq = SHORT.get(arg[1:2], arg[1:]), arg[2:], arg[2:]
        if name not in OPTIONS:
            raise SystemExit(f'srun (stand-in): unrecognized option {arg!r}')
        if not eq:
            i += 1
            if i == len(args):
                raise SystemExit(f'srun (stand-in): option {arg!r} needs a value')
            value = args[i]
        options[name] = value
        i += 1
    if i == len(args):
        raise SystemExit('srun (stand-in): no command to run')
    return options, args[i:]


def expand_hostlist(hostlist: str) -> List[str]:
    """``'127.0.0.[1-2],other'`` -> ``['127.0.0.1', '127.0.0.2', 'other']`` (Slurm syntax)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r'([^,\[]*)\[([^\]]*)\]|([^,]+)', hostlist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(','):
            first, _, last = part.partition('-')
            width = len(first)
            for n in range(int(first), int(last or first) + 1):
                hosts.append(f'{prefix}{n:0{width}d}')
    return hosts


def _task_env(options: Dict[str, str], rank: int) -> Dict[str, str]:
    ntasks = int(options.get('ntasks', '1'))
    per_node = min(int(options.get('ntasks-per-node', ntasks)), ntasks)
    nnodes = math.ceil(ntasks / per_node)
    nodelist = '127.0.0.1' if nnodes == 1 else f'127.0.0.[1-{nnodes}]'
    env = dict(
        SLURM_PROCID=rank,
        SLURM_LOCALID=rank % per_node,
        SLURM_NODEID=rank // per_node,
        SLURMD_NODENAME=f'127.0.0.{rank // per_node + 1}',
        SLURM_NTASKS=ntasks,
        SLURM_NPROCS=ntasks,
        SLURM_NTASKS_PER_NODE=per_node,
        SLURM_NNODES=nnodes,
        SLURM_JOB_NUM_NODES=nnodes,
        SLURM_NODELIST=nodelist,
        SLURM_JOB_NODELIST=nodelist,
        SLURM_STEP_NODELIST=nodelist,
        SLURM_JOB_ID=os.getpid(),
        SLURM_JOBID=os.getpid(),
        SLURM_STEP_ID=0,
        SLURM_JOB_NAME=options.get('job-name', Path(sys.argv[0]).name),
        SLURM_JOB_PARTITION=options.get('partition', 'standin'),
        SLURM_CPUS_PER_TASK=options.get('cpus-per-task', 1),
    )
    return {key: str(value) for key, value in env.items()}


def srun(args: List[str]) -> int:
    """Run the command as ``--ntasks`` local tasks; the highest exit status."""
    options, command = parse_srun(args)
    record = os.environ.get('SRUN_STANDIN_RECORD')
    if record:
        with open(record, 'a') as f:
            f.write(json.dumps(dict(options=options, command=command)) + '\n')
    ntasks = int(options.get('ntasks', '1'))
    tasks = [
        subprocess.Popen(command, env={**os.environ, **_task_env(options, rank)})
        for rank in range(ntasks)
    ]

    def stop(*_) -> None:
        for task in tasks:
            if task.poll() is None:
                task.terminate()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(143)))
    kill_on_bad_exit = options.get('kill-on-bad-exit', '0') == '1'
    while any(task.poll() is None for task in tasks):
        if kill_on_bad_exit and any(task.poll() not in (None, 0) for task in tasks):
            stop()
        time.sleep(0.2)
    return max(abs(task.returncode) for task in tasks)


def scontrol(args: List[str]) -> int:
    """``scontrol show hostname(s) HOSTLIST``: one host a line."""
    if len(args) != 3 or args[:2] not in (['show', 'hostnames'], ['show', 'hostname']):
        print(f'scontrol (stand-in): only "show hostnames LIST", got {args}', file=sys.stderr)
        return 1
    try:
        print('\n'.join(expand_hostlist(args[2])), flush=True)
    except BrokenPipeError:  # `| head -n1`, as mmengine reads it
        sys.stdout = None
    return 0


def install(folder: Path, python: Optional[str] = None) -> Path:
    """Write the ``srun`` and ``scontrol`` stand-ins into ``folder``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ('srun', 'scontrol'):
        path = folder / name
        path.write_text(
            f'#!/bin/sh\nexec "{python or sys.executable}" "{Path(__file__).resolve()}" '
            f'{name} "$@"\n'
        )
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


if __name__ == '__main__':
    tool = {'srun': srun, 'scontrol': scontrol}[sys.argv[1]]
    sys.exit(tool(sys.argv[2:]))
