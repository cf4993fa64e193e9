"""A ``CheckpointHook`` whose latest checkpoint survives a kill at any moment."""

import glob
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmdeit.registry import HOOKS

from ..atomic_file_backend import TMP_SUFFIX, atomic_write

__all__ = ['AtomicCheckpointHook', 'LAST_CHECKPOINT']

LAST_CHECKPOINT = 'last_checkpoint'


@HOOKS.register_module(name=['AtomicCheckpointHook', 'CheckpointHook'])
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` made safe against a run killed while it saves.

    Registered in the ``mmdeit`` scope under its own name and as ``CheckpointHook``, so every
    config with ``default_scope='mmdeit'`` uses it in place of mmengine's; the arguments and
    checkpoint files are those of ``CheckpointHook``. Three things differ:

    - The checkpoint file is written atomically (through
      :class:`~mmdeit.engine.AtomicLocalBackend`, registered on ``import mmdeit``).
    - The ``last_checkpoint`` pointer that ``--resume`` reads is replaced atomically, after the
      checkpoint it names is complete (mmengine truncates and rewrites it in place).
    - With ``max_keep_ckpts``, the oldest checkpoint is removed only after the new one and the
      pointer are written (mmengine removes it first, so a kill during the save of the new one
      leaves ``last_checkpoint`` naming a deleted file, and with ``max_keep_ckpts=1`` no
      checkpoint at all).

    Before the run it removes the temporary files (``.<name>.<random>.tmp``) that a killed
    write left in ``work_dir``.
    """

    def before_run(self, runner) -> None:
        """Remove the leftovers of writes that were killed before their final rename."""
        super().before_run(runner)
        if not is_main_process():
            return
        for leftover in glob.glob(osp.join(glob.escape(runner.work_dir), '.*' + TMP_SUFFIX)):
            runner.logger.warning(f'Removing {leftover}, left by an interrupted checkpoint write.')
            os.remove(leftover)

    def _remove_checkpoint(self, step: int) -> None:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        stale = []
        # _save_checkpoint and _save_best_checkpoint may both save the same step.
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args,
        )
        # Model parallel-like training pulls sharded states from all ranks; the rest is rank 0's.
        if not is_main_process():
            return
        atomic_write(self.last_ckpt, osp.join(runner.work_dir, LAST_CHECKPOINT))
        for old in stale:
            self._remove_checkpoint(old)
