"""Run the multi-process journeys many times in a row and count the clean exits.

Each run starts in a new temporary folder outside the checkout and does what a user does:
``tools/dist_train.sh CONFIG 2`` (two gloo processes) trains the tiny digits DeiT for 3 epochs,
then a second launch resumes it from the middle of the first epoch (``--resume iter_4.pth``)
and must end with weights identical to the uninterrupted run. A run counts as clean when both
launches exit 0 and no rank printed ``terminate called`` (the abort at interpreter teardown
that a live gloo process group causes; see :mod:`mmdeit.engine.distributed_exit`)::

    python tools/analysis/dist_exit_loop.py --runs 10
    python tools/analysis/dist_exit_loop.py --runs 10 --repo /path/to/other/checkout

``--journey multi-node`` runs instead the commands of ``docs/distributed.md``
(:mod:`multi_node_journeys`): Slurm training (2 tasks, a local ``srun`` stand-in), then a
resume from the middle of epoch 2 by two ``NNODES=2`` torchrun launches and the Slurm test;
clean when every launch exits 0, no rank aborts and the resumed weights are the Slurm run's.

One line per run on stdout; each launch's full output goes to ``<work-dir>/run_<i>/*.out``.
Exits 1 if any run was not clean.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[2]
BASE = 'mmdeit::digits/deit-digits-tiny_1xb64_digits.py'
EPOCHS = 3  # 48 train images, batch 8 per rank over 2 ranks: 3 iterations an epoch
ABORT = 'terminate called'


def digits_config(folder: Path, num_workers: int = 0, batch_size: int = 16, **extra: str) -> str:
    """Write the small digits DeiT user config (epoch and per-iteration checkpoints).

    Args:
        folder: Where to write ``digits_w{num_workers}.py``.
        num_workers: Train data loader workers. Defaults to 0.
        batch_size: Train batch size per process. Defaults to 16.
        **extra: More top-level config lines, ``key=value`` (the value as Python source).

    Returns:
        The config's path.
    """
    lines = [
        f'_base_ = {BASE!r}',
        f'train_dataloader = dict(batch_size={batch_size}, num_workers={num_workers}, '
        'persistent_workers=False, dataset=dict(indices=48))',
        'val_dataloader = dict(batch_size=40, num_workers=0, dataset=dict(indices=40))',
        'test_dataloader = val_dataloader',
        f'train_cfg = dict(max_epochs={EPOCHS})',
        'default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, '
        'max_keep_ckpts=-1))',
        "custom_hooks = [dict(type='NanGuardHook'), dict(type='AtomicCheckpointHook', "
        'by_epoch=False, interval=1, max_keep_ckpts=-1, save_last=False)]',
        *(f'{key} = {value}' for key, value in extra.items()),
    ]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'digits_w{num_workers}.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def user_env(**extra: str) -> Dict[str, str]:
    """A user's shell environment for the launchers: this interpreter's ``bin`` first on
    ``PATH``, nothing putting the checkout on the import path, one thread, unbuffered output;
    ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTEST_CURRENT_TEST')}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get('PATH', '')]),
        OMP_NUM_THREADS='1',
        PYTHONUNBUFFERED='1',
    )
    env.update(extra)
    return env


def dist_train(
    folder: Path, config: str, work_dir: str, *options: str, repo: Path = REPO, nproc: int = 2
) -> subprocess.CompletedProcess:
    """``tools/dist_train.sh CONFIG nproc --work-dir work_dir OPTIONS`` run from ``folder``.

    The output (stdout and stderr) is written to ``folder/<work_dir>.out`` and returned.
    """
    env = user_env(PORT=str(free_port()))
    command = ['bash', str(repo / 'tools' / 'dist_train.sh'), config, str(nproc)]
    command += ['--work-dir', work_dir, *options]
    command += ['--cfg-options', 'env_cfg.dist_cfg.backend=gloo']
    proc = subprocess.run(
        command,
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=540,
    )
    (folder / f'{work_dir}.out').write_text(proc.stdout)
    return proc


def _final_weights(path: Path) -> Dict[str, torch.Tensor]:
    from mmdeit.engine import safe_load

    return safe_load(str(path))['state_dict']


def one_run(folder: Path, repo: Path = REPO) -> List[str]:
    """Train, then resume from the middle of epoch 1; the list of problems (empty: clean)."""
    config = digits_config(folder, batch_size=8, randomness='dict(seed=0, diff_rank_seed=True)')
    problems = []
    for name, options in (('reference', ()), ('resumed', ('--resume', 'reference/iter_4.pth'))):
        proc = dist_train(folder, config, name, *options, repo=repo)
        if proc.returncode != 0:
            problems.append(f'{name} exited {proc.returncode}')
        if ABORT in proc.stdout:
            problems.append(f'{name}: a rank printed {ABORT!r}')
        if problems:
            return problems
    final = f'epoch_{EPOCHS}.pth'
    resumed, reference = (_final_weights(folder / d / final) for d in ('resumed', 'reference'))
    if any(not torch.equal(resumed[k], reference[k]) for k in reference):
        problems.append('the resumed weights differ from the uninterrupted run')
    return problems


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=10, help='runs in a row (default 10)')
    parser.add_argument('--repo', type=Path, default=REPO, help='checkout whose tools run')
    parser.add_argument('--work-dir', type=Path, help='keep the runs here (default: a temp dir)')
    parser.add_argument(
        '--journey',
        choices=['one-node', 'multi-node'],
        default='one-node',
        help='one-node: tools/dist_train.sh CONFIG 2 (default); multi-node: the Slurm and '
        'NNODES=2 commands of docs/distributed.md',
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f'--runs must be at least 1, got {args.runs}')
    if not (args.repo / 'tools' / 'dist_train.sh').is_file():
        parser.error(f'--repo {args.repo} has no tools/dist_train.sh')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    root = args.work_dir or Path(tempfile.mkdtemp(prefix='dist_exit_loop_'))
    run = one_run
    if args.journey == 'multi-node':
        try:  # imported as tools.analysis.dist_exit_loop
            from .multi_node_journeys import one_run as run
        except ImportError:  # run as a script: this folder is on sys.path
            from multi_node_journeys import one_run as run
    clean = 0
    for i in range(args.runs):
        start = time.perf_counter()
        problems = run(root / f'run_{i}', repo=args.repo.resolve())
        clean += not problems
        status = 'clean' if not problems else '; '.join(problems)
        print(f'run {i + 1}/{args.runs}: {status} ({time.perf_counter() - start:.0f} s)')
    print(f'{clean} of {args.runs} runs exited cleanly (logs in {root})')
    return 0 if clean == args.runs else 1


if __name__ == '__main__':
    sys.exit(main())
