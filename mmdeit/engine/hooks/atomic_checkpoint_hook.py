"""A ``CheckpointHook`` whose latest checkpoint survives a kill at any moment."""

import glob
import os
import os.path as osp
from typing import Any, List

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmdeit.registry import HOOKS

from ..atomic_file_backend import TMP_SUFFIX, atomic_write
from ..engine_setup import setup_engine

__all__ = ['AtomicCheckpointHook', 'LAST_CHECKPOINT']

LAST_CHECKPOINT = 'last_checkpoint'


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` made safe against a run killed while it saves, with
    checkpoints that resume on torch >= 2.6.

    Registered in the ``mmdeit`` scope under its own name only: a config uses it by naming it,
    ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', ...))`` (as mmdeit's
    ``configs/_base_/default_runtime.py`` does), or ``type='mmdeit.AtomicCheckpointHook'``
    from another scope (an mmdet or mmseg config, after ``custom_imports`` of ``mmdeit``);
    ``type='CheckpointHook'`` stays mmengine's. The arguments and checkpoint files are those
    of ``CheckpointHook``. What differs:

    - Building it calls :func:`~mmdeit.engine.setup_engine`, which turns on, for the process,
      atomic local writes (:class:`~mmdeit.engine.AtomicLocalBackend`, so the checkpoint file
      is written atomically) and the safe checkpoint loader (so ``resume``, ``load_from`` and
      ``init_cfg=dict(type='Pretrained')`` read mmengine checkpoints on torch >= 2.6 and refuse
      a pickle that would run code).
    - The ``last_checkpoint`` pointer that ``--resume`` reads is replaced atomically, after the
      checkpoint it names is complete (mmengine truncates and rewrites it in place).
    - With ``max_keep_ckpts``, the oldest checkpoint is removed only after the new one and the
      pointer are written (mmengine removes it first, so a kill during the save of the new one
      leaves ``last_checkpoint`` naming a deleted file, and with ``max_keep_ckpts=1`` no
      checkpoint at all).
    - With ``save_best``, the previous best checkpoint is removed only after the new best is
      written (mmengine removes it first: a kill in between leaves no best checkpoint).

    Before the run it removes the temporary files (``.<name>.<random>.tmp``) that a killed
    write left in ``work_dir``.

    When the engine is turned on: a Runner builds its hooks in its constructor, after the
    model and before ``train``/``val``/``test`` run ``before_run``, the model weights'
    initialisation (``init_cfg``) and ``load_or_resume``, so all of these use the safe loader.
    Checkpoints that the model reads while it is built, before the hooks exist (such as
    ``DistilledImageClassifier``'s ``teacher_ckpt``), are read before it: for those, use
    mmdeit's tools or call :func:`~mmdeit.engine.setup_engine` before building the Runner.

    Args:
        *args: As for mmengine's ``CheckpointHook``.
        **kwargs: As for mmengine's ``CheckpointHook``.
    """

    def __init__(self, *args, **kwargs) -> None:
        setup_engine()
        super().__init__(*args, **kwargs)

    def before_run(self, runner) -> None:
        """Remove the leftovers of writes that were killed before their final rename."""
        super().before_run(runner)
        if not is_main_process():
            return
        for leftover in glob.glob(osp.join(glob.escape(runner.work_dir), '.*' + TMP_SUFFIX)):
            runner.logger.warning(f'Removing {leftover}, left by an interrupted checkpoint write.')
            os.remove(leftover)

    def _save_best_checkpoint(self, runner, metrics: dict) -> None:
        """mmengine's best-checkpoint logic, with the old best removed after the new is
        written: while it runs, ``file_backend`` records removals instead of doing them."""
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        keep = {
            getattr(self, 'best_ckpt_path', None),
            *(getattr(self, 'best_ckpt_path_dict', None) or {}).values(),
        }
        for method, path in deferred.removals:
            if path not in keep:  # a new best of the same name replaced the old one in place
                getattr(backend, method)(path)

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


class _DeferredRemovals:
    """A file backend that records ``remove``/``rmtree`` calls instead of running them and
    forwards everything else to the real backend."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.removals: List[tuple] = []

    def remove(self, path: str) -> None:
        self.removals.append(('remove', path))

    def rmtree(self, path: str) -> None:
        self.removals.append(('rmtree', path))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)
