"""Evaluate a checkpoint with an mmdeit config (arguments as mmpretrain's tools/test.py)."""

import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction
from mmengine.evaluator import DumpResults
from mmengine.runner import Runner

import mmdeit  # noqa: F401  (registers modules)
from mmdeit.apis import checkpoint_path, load_config
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
from mmdeit.models.classifiers import student_model_cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a classifier (mmdeit)')
    parser.add_argument('config', help='test config file path, or mmdeit::path of a shipped one')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs and metrics')
    parser.add_argument('--out', help='dump the predictions to this pickle file')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='override config entries, key=value'
    )
    parser.add_argument('--no-keep-freed-memory', action='store_true', help=KEEP_FREED_HELP)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.no_keep_freed_memory:
        keep_freed_memory()  # fewer page faults for the tensors of every step
    try:
        cfg = load_config(args.config)
        checkpoint_path(args.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'mmdeit: cannot test {args.config}: {err}')
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.train_dataloader = cfg.train_cfg = cfg.optim_wrapper = cfg.param_scheduler = None
    # The student alone is evaluated: no teacher is built, its checkpoint is not needed.
    cfg.model = student_model_cfg(cfg.model)
    try:
        check_evaluators(cfg, fields=('test_evaluator',))
        check_data_roots(cfg)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'mmdeit: cannot test {args.config}: {err}')
    if args.out and not args.out.endswith(('.pkl', '.pickle')):
        sys.exit('mmdeit: --out must end with .pkl or .pickle')
    # A rank that exits with the process group alive can abort (SIGABRT) after a finished run.
    with destroy_process_group_on_success():
        setup_cpu_distributed(cfg)  # torchrun without GPUs: gloo, DDP without device ids
        setup_engine()  # safe checkpoint loading (resume on torch >= 2.6), atomic writes
        runner = Runner.from_cfg(cfg)
        if args.out:
            runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
        metrics = runner.test()
        del runner  # its DDP wrapper holds the group: freed before the group is destroyed
    return metrics


if __name__ == '__main__':
    freeze_startup_objects()  # the imports' objects: no collector passes over them
    main()
