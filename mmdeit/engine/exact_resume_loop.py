"""An ``EpochBasedTrainLoop`` that resumes in the middle of an epoch at the right batch, with
the random states the uninterrupted run had there."""

import logging
from typing import Any, Dict, Iterator, Optional

from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop

from mmdeit.registry import LOOPS

from .rng_state import capture_rng_state, restore_rng_state

__all__ = ['ExactResumeEpochBasedTrainLoop']


@LOOPS.register_module()
class ExactResumeEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` that continues a resumed epoch where it stopped.

    mmengine restores ``epoch`` and ``iter`` from an iteration-based checkpoint
    (``CheckpointHook(by_epoch=False)``) but then trains the interrupted epoch from its first
    batch again, so the run repeats batches and ends with more iterations than planned. This
    loop skips the batches the checkpoint had already trained: it re-creates the epoch's data
    loader iterator with the random state the epoch started with (the workers' base seed comes
    from it), reads the consumed batches again without training on them, so that every random
    draw of the data pipeline, in the main process or in each worker, is repeated, and then
    sets the random state of the checkpoint. Resuming at an epoch boundary reads nothing again.

    :class:`~mmdeit.engine.RNGStateHook` hands it the saved states (``resume_rng_state``) and
    saves the one it records when an epoch starts (``epoch_rng_state``); that hook also makes
    a plain ``EpochBasedTrainLoop`` this class, so configs need not name it. It can be named
    as ``train_cfg = dict(type='mmdeit.ExactResumeEpochBasedTrainLoop', max_epochs=...)``;
    the arguments are those of ``EpochBasedTrainLoop``.
    """

    #: The RNG entry of the checkpoint being resumed (set by RNGStateHook before training).
    resume_rng_state: Optional[Dict[str, Any]] = None
    #: The random state captured just before the current epoch's data iterator was created.
    epoch_rng_state: Optional[Dict[str, Any]] = None

    def run_epoch(self) -> None:
        """Iterate one epoch, or what is left of it after a mid-epoch resume."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        resume, self.resume_rng_state = self.resume_rng_state, None
        done = self._iter - self._epoch * len(self.dataloader)  # batches already trained
        if resume is not None and done > 0:
            if resume.get('epoch_start') is None:
                print_log(
                    'The checkpoint has no random state of the start of its epoch: the data '
                    'pipeline of the rest of this epoch will not repeat the uninterrupted run.',
                    logger='current',
                    level=logging.WARNING,
                )
            else:
                restore_rng_state(resume['epoch_start'], 'rng_state.epoch_start')
        elif resume is not None:
            restore_rng_state(resume['current'], 'rng_state.current')
        self.epoch_rng_state = capture_rng_state()
        batches = self._skip(done) if done > 0 else iter(self.dataloader)
        if resume is not None and done > 0:
            restore_rng_state(resume['current'], 'rng_state.current')
        for idx, data_batch in enumerate(batches, start=max(done, 0)):
            self.run_iter(idx, data_batch)

        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _skip(self, done: int) -> Iterator:
        """The epoch's batches after the first ``done``, which are read and dropped."""
        total = len(self.dataloader)
        if done >= total:
            return iter(())
        print_log(
            f'Resuming inside epoch {self._epoch + 1}: reading its first {done} of {total} '
            'batches again without training on them, so that the data pipeline repeats its '
            'random draws.',
            logger='current',
            level=logging.INFO,
        )
        batches = iter(self.dataloader)
        for _ in range(done):
            next(batches)
        return batches
