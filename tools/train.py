"""Train a model from an mmdeit config (arguments as mmpretrain's tools/train.py)."""

import argparse
import os
import os.path as osp
import sys
from typing import Optional, Union

import torch
from mmengine.config import Config, DictAction
from mmengine.device import get_device
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner

import mmdeit  # noqa: F401  (registers modules, safe checkpoint loading)
from mmdeit.datasets import check_data_roots
from mmdeit.engine import setup_cpu_distributed
from mmdeit.registry import OPTIM_WRAPPERS

AMP_HELP = (
    "mixed precision training. On a GPU: fp16 autocast with dynamic loss scaling (mmengine's "
    "AmpOptimWrapper, as mmpretrain's --amp). On a CPU-only run: bf16 autocast without loss "
    "scaling (CPUAmpOptimWrapper; mmengine's AmpOptimWrapper needs a GPU, and CPU autocast "
    'only does bf16, whose fp32 exponent range needs no loss scaling); fast on CPUs with '
    'AVX512-BF16 or AMX'
)


@OPTIM_WRAPPERS.register_module(force=True)
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for CPU-only runs: bf16 autocast, no loss scaling.

    mmengine 0.10's ``AmpOptimWrapper`` refuses to be built without a GPU (NPU, MLU, MUSA),
    and its ``torch.cuda.amp.GradScaler`` would be disabled there anyway. This one runs the
    forward pass and the loss under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (through
    ``AmpOptimWrapper.optim_context``) with a disabled grad scaler: ``backward`` and ``step``
    are those of a plain ``OptimWrapper`` and the checkpointed ``loss_scaler`` state is empty
    (a GPU checkpoint's scaler state is ignored on resume). bf16 has the exponent range of
    fp32, so its gradients do not underflow and need no scaling.

    Args:
        loss_scale: Ignored (bf16 is not scaled); a value other than None or 'dynamic' is
            logged as ignored. Defaults to None.
        dtype: The autocast dtype; the CPU only supports 'bfloat16'. Defaults to 'bfloat16'.
        **kwargs: Arguments of ``OptimWrapper`` (``optimizer``, ``clip_grad``,
            ``accumulative_counts``).
    """

    def __init__(
        self,
        loss_scale: Optional[Union[str, float, dict]] = None,
        dtype: Union[str, torch.dtype] = 'bfloat16',
        **kwargs,
    ):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(f'CPU autocast only supports dtype bfloat16, got {dtype!r}')
        OptimWrapper.__init__(self, **kwargs)  # skips AmpOptimWrapper's GPU assert
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)  # a pass-through
        self.cast_dtype = torch.bfloat16
        ignored = '' if loss_scale in (None, 'dynamic') else f' (loss_scale={loss_scale!r} ignored)'
        print_log(
            f'CPUAmpOptimWrapper: bf16 autocast on the CPU, no loss scaling{ignored}',
            logger='current',
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
    parser.add_argument('config', help='train config file path')
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
    cfg = merge_args(Config.fromfile(args.config), args)
    try:
        check_data_roots(cfg)
    except FileNotFoundError as err:
        sys.exit(f'mmdeit: cannot train {args.config}: {err}')
    setup_cpu_distributed(cfg)  # torchrun without GPUs: gloo, DDP without device ids
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
