"""Train a model from an mmdeit config (arguments as mmpretrain's tools/train.py)."""

import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.runner import Runner

import mmdeit  # noqa: F401  (registers modules)
from mmdeit.apis import load_config
from mmdeit.datasets import check_data_roots
from mmdeit.engine import (
    KEEP_FREED_HELP,
    destroy_process_group_on_success,
    freeze_startup_objects,
    keep_freed_memory,
    setup_cpu_distributed,
    setup_engine,
)
from mmdeit.evaluation import check_evaluators

AMP_HELP = (
    "mixed precision training. On a GPU: fp16 autocast with dynamic loss scaling (mmengine's "
    "AmpOptimWrapper, as mmpretrain's --amp). On a CPU-only run: bf16 autocast without loss "
    "scaling (CPUAmpOptimWrapper; mmengine's AmpOptimWrapper needs a GPU, and CPU autocast "
    'only does bf16, whose fp32 exponent range needs no loss scaling); fast on CPUs with '
    'AVX512-BF16 or AMX'
)


def _enable_amp(cfg: Config) -> None:
    """``--amp``: fp16 + dynamic loss scaling on a GPU, bf16 without scaling on the CPU."""
    if get_device() == 'cpu':
        cfg.optim_wrapper.type = 'mmdeit.CPUAmpOptimWrapper'  # whatever the default scope
        cfg.optim_wrapper.dtype = 'bfloat16'
        cfg.optim_wrapper.pop('loss_scale', None)
    else:  # mmpretrain's --amp: autocast's default fp16 on a GPU
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a classifier (mmdeit)')
    parser.add_argument('config', help='train config file path, or mmdeit::path of a shipped one')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from this checkpoint; without a value, from the latest one in work-dir',
    )
    parser.add_argument('--amp', action='store_true', help=AMP_HELP)
    parser.add_argument('--no-validate', action='store_true', help='skip validation')
    parser.add_argument(
        '--auto-scale-lr', action='store_true', help='scale the lr with the real batch size'
    )
    parser.add_argument('--no-pin-memory', action='store_true')
    parser.add_argument('--no-persistent-workers', action='store_true')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value (e.g. train_cfg.max_iters=2)',
    )
    parser.add_argument('--no-keep-freed-memory', action='store_true', help=KEEP_FREED_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Fold the command-line options into the config."""
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        _enable_amp(cfg)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True

    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader) is not None:
            if args.no_pin_memory:
                cfg[loader]['pin_memory'] = False
            if args.no_persistent_workers:
                cfg[loader]['persistent_workers'] = False
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if not args.no_keep_freed_memory:
        keep_freed_memory()  # fewer page faults for the tensors of every step
    try:
        cfg = merge_args(load_config(args.config), args)
        check_evaluators(cfg)
        check_data_roots(cfg)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'mmdeit: cannot train {args.config}: {err}')
    # A rank that exits with the process group alive can abort (SIGABRT) after a finished run.
    with destroy_process_group_on_success():
        setup_cpu_distributed(cfg)  # torchrun without GPUs: gloo, DDP without device ids
        setup_engine()  # safe checkpoint loading (resume on torch >= 2.6), atomic writes
        Runner.from_cfg(cfg).train()  # no reference kept: freed before the group is destroyed


if __name__ == '__main__':
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    main()
