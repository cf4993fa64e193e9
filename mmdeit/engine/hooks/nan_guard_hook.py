"""Stop training at the first NaN/inf loss, before the broken weights are checkpointed."""

import math
from typing import Dict, Optional, Sequence

import torch
from mmengine.dist import all_reduce
from mmengine.hooks import Hook

from mmdeit.registry import HOOKS

__all__ = ['NanGuardHook']


def _is_finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return True  # not a number: nothing to check


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f'{value.item():g}' if value.numel() == 1 else f'tensor{tuple(value.shape)}'
    return f'{value:g}'


@HOOKS.register_module()
class NanGuardHook(Hook):
    """Stop training with a clear error when a loss becomes NaN or infinite.

    After every training iteration it checks the log variables that the model's
    ``train_step`` returns (``loss`` and each ``loss_*``). At the first non-finite one it raises
    ``FloatingPointError`` naming the iteration, the epoch, every non-finite loss key and the
    last checkpoint saved. It runs before ``CheckpointHook`` (priority 'LOW' vs 'VERY_LOW'), so
    the broken state of that iteration (the optimizer has already stepped on it) is never
    saved: the last good checkpoint stays the latest one, and ``--resume`` starts from it.

    In distributed training every rank raises at the same iteration (the check is all-reduced),
    so no rank is left waiting in a collective.

    Add it with ``custom_hooks = [dict(type='NanGuardHook')]``.

    Args:
        loss_keys: The log variables to check. Defaults to None: every key that contains
            'loss' (the keys mmengine sums into the total loss, and the total).
    """

    priority = 'LOW'

    def __init__(self, loss_keys: Optional[Sequence[str]] = None):
        if loss_keys is not None:
            if isinstance(loss_keys, str) or not all(isinstance(k, str) for k in loss_keys):
                raise TypeError(f'loss_keys must be a sequence of str or None, got {loss_keys!r}')
            loss_keys = tuple(loss_keys)
        self.loss_keys = loss_keys

    def _bad_losses(self, outputs: Optional[Dict]) -> Dict[str, str]:
        if not isinstance(outputs, dict):
            return {}
        keys = self.loss_keys or [k for k in outputs if 'loss' in k]
        bad = [k for k in keys if k in outputs and not _is_finite(outputs[k])]
        return {k: _describe(outputs[k]) for k in bad}

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs: Optional[Dict] = None
    ) -> None:
        """Raise ``FloatingPointError`` if a loss of this iteration is NaN or infinite."""
        bad = self._bad_losses(outputs)
        flag = torch.tensor(float(bool(bad)))
        all_reduce(flag, op='max')  # a no-op without distributed training
        if not flag.item():
            return
        last_ckpt = runner.message_hub.get_info('last_ckpt')
        if bad:
            losses = ', '.join(f'{k}={v}' for k, v in bad.items())
            what = f'non-finite loss {losses}'
        else:
            what = 'non-finite loss on another rank'
        where = f'iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch {batch_idx + 1})'
        if last_ckpt:
            kept = (
                f'The last good checkpoint is {last_ckpt}; after fixing the cause (a lower lr, '
                'gradient clipping, the data) resume from it with --resume.'
            )
        else:
            kept = 'No checkpoint had been saved yet.'
        message = (
            f'NanGuardHook: {what} at {where}. Training stopped; the weights of this '
            f'iteration are not finite and were not saved. {kept}'
        )
        runner.logger.error(message)
        raise FloatingPointError(message)
