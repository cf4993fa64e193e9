"""The multi-machine commands of ``docs/distributed.md``, run as written on this machine.

Two journeys share one run of the tiny digits DeiT (3 epochs of 3 iterations, 2 processes):

1. ``tools/slurm_train.sh`` with 2 tasks on 2 "nodes" trains it, under the local ``srun`` and
   ``scontrol`` stand-ins of :mod:`slurm_standin` (so mmengine's ``slurm`` launcher reads real
   Slurm variables), and ``tools/slurm_test.sh`` tests its last checkpoint;
2. two ``tools/dist_train.sh CONFIG 1`` launches, ``NNODES=2``, ``NODE_RANK=0`` and ``1``, each
   from its own folder (its "machine"), resume it from the middle of epoch 2 and must end with
   the uninterrupted run's weights, bit for bit.

Each command is the line of ``docs/distributed.md`` (``tools/`` given the checkout's path),
run by ``bash -c`` with the shell variables it names (``$CONFIG``, ``$GPUS``, ...) set.
``tools/analysis/dist_exit_loop.py --journey multi-node`` runs them in a loop.
"""

import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

import torch

try:  # imported as tools.analysis.multi_node_journeys
    from .dist_exit_loop import ABORT, EPOCHS, REPO, digits_config, free_port, user_env
    from .slurm_standin import install
except ImportError:  # run from this folder
    from dist_exit_loop import ABORT, EPOCHS, REPO, digits_config, free_port, user_env
    from slurm_standin import install

DOC = Path('docs') / 'distributed.md'
RESUME_FROM = 'iter_4.pth'  # the first iteration of epoch 2 of 3: the middle of an epoch
#: The machines share no folder: validation gathers the ranks' results through the process
#: group, not through files under ``.dist_test`` in the current folder (docs/distributed.md).
NO_SHARED_FOLDER = dict(val_evaluator="dict(collect_device='gpu')", test_evaluator='val_evaluator')


def doc_lines(*needles: str, repo: Path = REPO) -> List[str]:
    """The command lines of the doc's bash blocks that contain every one of ``needles``."""
    lines, in_bash = [], False
    for line in (repo / DOC).read_text().splitlines():
        if line.startswith('```'):
            in_bash = line == '```bash'
        elif in_bash and line.strip() and not line.startswith('#'):
            if all(n in line for n in needles):
                lines.append(line)
    return lines


def launch(
    line: str, folder: Path, log: str, variables: Dict[str, str], repo: Path = REPO
) -> subprocess.Popen:
    """Start ``bash -c LINE`` in ``folder`` with ``variables`` set; output to ``folder/log``."""
    command = re.sub(r'(?<![\w/.$])tools/', f'{repo}/tools/', line)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / log, 'w') as out:
        return subprocess.Popen(
            ['bash', '-c', command],
            cwd=folder,
            env=user_env(**variables),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops every rank
        )


def wait(procs: Sequence[subprocess.Popen], timeout: float = 540) -> List[int]:
    """Wait for every process; on a timeout kill their process groups. The exit statuses."""
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return [proc.returncode for proc in procs]


def slurm(
    folder: Path, script: str, log: str, variables: Dict[str, str], repo: Path = REPO
) -> List[subprocess.Popen]:
    """Start the doc's ``tools/SCRIPT`` line under the stand-in ``srun`` (see :func:`wait`)."""
    (line,) = doc_lines(f'tools/{script}', repo=repo)
    bin_dir = install(folder / 'slurm_bin')
    path = os.pathsep.join([str(bin_dir), user_env()['PATH']])
    return [launch(line, folder, log, dict(variables, PATH=path), repo=repo)]


def two_nodes(
    folders: Sequence[Path], log: str, variables: Dict[str, str], resume: bool = False,
    repo: Path = REPO,
) -> List[subprocess.Popen]:  # fmt: skip
    """Start the doc's ``NNODES=2`` lines (with ``--resume`` or without), node ``i`` in
    ``folders[i]``."""
    lines = [
        line
        for line in doc_lines('NNODES=2', 'tools/dist_train.sh', repo=repo)
        if ('--resume' in line) == resume
    ]
    assert [f'NODE_RANK={i} ' in line for i, line in enumerate(lines)] == [True, True], lines
    return [launch(line, f, log, variables, repo=repo) for line, f in zip(lines, folders)]


def slurm_variables(folder: Path, **more: str) -> Dict[str, str]:
    """2 tasks, one per node, a free ``MASTER_PORT``, no ``MASTER_ADDR`` (``scontrol`` names
    it), ``SRUN_STANDIN_RECORD`` in ``folder``."""
    return dict(
        PARTITION='debug',
        JOB_NAME='deit-digits',
        GPUS='2',
        GPUS_PER_NODE='1',
        CPUS_PER_TASK='1',
        MASTER_PORT=str(free_port()),
        SRUN_STANDIN_RECORD=str(folder / 'srun_calls.jsonl'),
        **more,
    )


def node_variables(**more: str) -> Dict[str, str]:
    """One process per "machine", both on this one: ``MASTER_ADDR=127.0.0.1``, a free port."""
    return dict(GPUS='1', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), **more)


def final_weights(work_dir: Path) -> Dict[str, torch.Tensor]:
    from mmdeit.engine import safe_load

    return safe_load(str(work_dir / f'epoch_{EPOCHS}.pth'))['state_dict']


def one_run(folder: Path, repo: Path = REPO) -> List[str]:
    """Slurm train, then at once the 2-node resume and the Slurm test; the problems (empty:
    clean)."""
    config = digits_config(
        folder, batch_size=8, randomness='dict(seed=0, diff_rank_seed=True)', **NO_SHARED_FOLDER
    )
    nodes = [folder / 'node0', folder / 'node1']
    train = dict(CONFIG=config, WORK_DIR='slurm')
    procs = {'slurm_train': slurm(folder, 'slurm_train.sh', 'slurm_train.out',
                                  slurm_variables(folder, **train), repo)}  # fmt: skip
    problems = _check(procs, folder, *nodes)
    if problems:
        return problems
    resume = dict(CONFIG=config, CHECKPOINT=str(folder / 'slurm' / RESUME_FROM))
    test = dict(CONFIG=config, CHECKPOINT=str(folder / 'slurm' / f'epoch_{EPOCHS}.pth'))
    procs = {
        'two_nodes': two_nodes(nodes, 'two_nodes.out', node_variables(**resume), True, repo),
        'slurm_test': slurm(folder, 'slurm_test.sh', 'slurm_test.out',
                            slurm_variables(folder, **test), repo),
    }  # fmt: skip
    problems = _check(procs, folder, *nodes)
    if not problems:
        resumed = final_weights(nodes[0] / 'work_dirs' / Path(config).stem)
        reference = final_weights(folder / 'slurm')
        if any(not torch.equal(resumed[k], reference[k]) for k in reference):
            problems.append('the resumed weights differ from the uninterrupted run')
    return problems


def _check(procs: Dict[str, List[subprocess.Popen]], *folders: Path) -> List[str]:
    """Wait for every launch; a problem for each that failed or had a rank abort."""
    statuses = {name: wait(p) for name, p in procs.items()}
    problems = [f'{name} exited {s}' for name, s in statuses.items() if any(s)]
    for name in procs:
        logs = [f / f'{name}.out' for f in folders if (f / f'{name}.out').is_file()]
        if any(ABORT in log.read_text() for log in logs):
            problems.append(f'{name}: a rank printed {ABORT!r}')
    return problems
