"""Checkpoints that carry every random state, so that a resumed run repeats the uninterrupted
one bit for bit."""

import functools
import logging
from typing import Any, Dict, List, Optional

from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner import BaseLoop, EpochBasedTrainLoop

from mmdeit.registry import HOOKS

from ..exact_resume_loop import ExactResumeEpochBasedTrainLoop
from ..rng_state import RNGStateError, capture_rng_state, check_rng_state, restore_rng_state

__all__ = ['RNG_STATE_KEY', 'RNGStateHook']

#: The checkpoint entry this hook writes.
RNG_STATE_KEY = 'rng_state'
_FORMAT = 1


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Saves every random state that decides the rest of a run in each checkpoint, and
    restores it on resume.

    mmengine's checkpoints hold no random state: a run resumed with random augmentation,
    Mixup/CutMix or drop path continues with other draws than the uninterrupted run. With this
    hook (a default hook of every mmdeit config, ``default_hooks.rng_state`` in
    ``configs/_base_/default_runtime.py``; ``type='mmdeit.RNGStateHook'`` from another scope),
    ``checkpoint['rng_state']`` holds, for each rank (``ranks[r]``, gathered from all ranks
    when the checkpoint is written):

    - ``current``: torch's CPU generator (and each CUDA device's), numpy's global state and
      python's ``random``, as tensors and ints (read by the safe loader without additions);
    - ``epoch_start``: the same when the epoch's data iterator was created (the data loader
      workers' base seed is drawn from it), for a resume inside the epoch;
    - ``sampler_seed``, ``sampler_epoch``: the train sampler's ``seed`` and ``epoch``;
      ``worker_seed``: the seed mmengine's ``worker_init_fn`` gives the data loader workers.

    ``rng_state['epoch']`` and ``['iter']`` repeat the checkpoint's ``meta`` (a resume checks
    that they agree); the loop resumes ``iter - epoch * len(train_dataloader)`` batches into
    the epoch.

    With several ranks, the entries are gathered (``all_gather_object``, a few kB per rank)
    at the end of each epoch, after each validation and after the iterations at which a
    ``CheckpointHook`` saves, because only rank 0 writes the checkpoint.

    On resume (``Runner.resume``, at ``before_train``) it checks the entry of this rank
    (:class:`~mmdeit.engine.RNGStateError` names a bad field), restores the sampler and worker
    seeds, and hands the random states to :class:`~mmdeit.engine.ExactResumeEpochBasedTrainLoop`,
    which sets them where the uninterrupted run had them and skips the batches already
    trained in the epoch. A plain ``EpochBasedTrainLoop`` is made that class at ``before_run``
    (it only overrides ``run_epoch``); with another loop, the states are set at the first
    iteration. A checkpoint without the entry (older ones) resumes with a warning that the
    continuation is not exact.

    Validation does not move the training's random streams: the states are saved when
    validation starts and set back when it ends (creating the val data iterator draws from
    torch's generator), so a checkpoint saved after validation (the best one) holds the
    training's state, and a resume at an epoch boundary, which does not validate again,
    continues with the same draws.

    Args:
        priority: Hook priority; it must run before ``CheckpointHook`` (``'VERY_LOW'``) in
            ``after_train_iter``, ``after_train_epoch`` and ``after_val_epoch``. Defaults to
            'LOW'.
    """

    def __init__(self, priority: str = 'LOW') -> None:
        self.priority = priority
        self._loaded: Optional[Dict[str, Any]] = None
        self._val_state: Optional[Dict[str, Any]] = None
        self._gathered: Optional[List[Dict[str, Any]]] = None
        self._pending_current: Optional[Dict[str, Any]] = None

    # ----------------------------------------------------------------------- set-up, resume
    def before_run(self, runner) -> None:
        """Make a plain ``EpochBasedTrainLoop`` one that resumes mid-epoch exactly."""
        loop = getattr(runner, '_train_loop', None)
        if isinstance(loop, BaseLoop) and type(loop) is EpochBasedTrainLoop:
            loop.__class__ = ExactResumeEpochBasedTrainLoop

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the checkpoint's random states until ``before_train`` knows it is a resume."""
        self._loaded = dict(
            iter=checkpoint.get('meta', {}).get('iter'), state=checkpoint.get(RNG_STATE_KEY)
        )

    def before_train(self, runner) -> None:
        """Restore the saved seeds and hand the random states to the loop (on resume only)."""
        loaded, self._loaded = self._loaded, None
        # load_from (fine-tuning) also loads a checkpoint; only a resume sets the loop's iter.
        if loaded is None or not runner.iter or loaded['iter'] != runner.iter:
            return
        self._warn_persistent_workers(runner)
        if loaded['state'] is None:
            runner.logger.warning(
                'The resumed checkpoint holds no random state (it was saved without mmdeit '
                "RNGStateHook): training continues with the generators' current states, so it "
                'will not repeat the uninterrupted run exactly.'
            )
            return
        entry = self._entry(loaded['state'], loaded['iter'])
        if entry is None:
            return
        self._restore_seeds(runner, entry)
        loop = runner.train_loop
        if isinstance(loop, ExactResumeEpochBasedTrainLoop):
            loop.resume_rng_state = entry
        else:
            self._pending_current = entry['current']

    def _entry(self, state: Any, meta_iter: int) -> Optional[Dict[str, Any]]:
        """This rank's checked entry of a checkpoint's ``rng_state``."""
        if not isinstance(state, dict) or not isinstance(state.get('ranks'), (list, tuple)):
            raise RNGStateError(f'{RNG_STATE_KEY}.ranks: missing or not a list in {state!r:.80}')
        if state.get('format') != _FORMAT:
            raise RNGStateError(
                f'{RNG_STATE_KEY}.format: {state.get("format")!r}, this mmdeit reads {_FORMAT}'
            )
        if state.get('iter') != meta_iter:
            raise RNGStateError(
                f'{RNG_STATE_KEY}.iter: {state.get("iter")!r}, but the checkpoint is at iteration '
                f'{meta_iter}: the random states belong to another point of the run'
            )
        ranks, rank, world_size = state['ranks'], get_rank(), get_world_size()
        if len(ranks) != world_size:
            print_log(
                f'The checkpoint holds the random states of {len(ranks)} processes and this run '
                f'has {world_size}: the continuation will not repeat the interrupted run.',
                logger='current',
                level=logging.WARNING,
            )
            if rank >= len(ranks):
                return None
        where = f'{RNG_STATE_KEY}.ranks[{rank}]'
        entry = ranks[rank]
        if not isinstance(entry, dict):
            raise RNGStateError(f'{where}: expected a dict, got {type(entry).__name__}')
        if 'current' not in entry:
            raise RNGStateError(f'{where}.current: missing')
        check_rng_state(entry['current'], f'{where}.current')
        if entry.get('epoch_start') is not None:
            check_rng_state(entry['epoch_start'], f'{where}.epoch_start')
        for key in ('sampler_seed', 'sampler_epoch', 'worker_seed'):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RNGStateError(f'{where}.{key}: expected an int or None, got {value!r}')
        return entry

    def _restore_seeds(self, runner, entry: Dict[str, Any]) -> None:
        loader = runner.train_dataloader
        sampler = getattr(loader, 'sampler', None)
        if entry.get('sampler_seed') is not None and hasattr(sampler, 'seed'):
            sampler.seed = entry['sampler_seed']
        if entry.get('sampler_epoch') is not None and hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(entry['sampler_epoch'])
        init_fn = getattr(loader, 'worker_init_fn', None)
        if entry.get('worker_seed') is not None and isinstance(init_fn, functools.partial):
            if 'seed' in init_fn.keywords:
                loader.worker_init_fn = functools.partial(
                    init_fn.func,
                    *init_fn.args,
                    **{**init_fn.keywords, 'seed': entry['worker_seed']},
                )

    def _warn_persistent_workers(self, runner) -> None:
        loader = runner.train_dataloader
        if getattr(loader, 'persistent_workers', False) and getattr(loader, 'num_workers', 0):
            runner.logger.warning(
                'The train data loader has persistent workers: their random states carry over '
                'from epoch to epoch inside the worker processes and are not in checkpoints, so '
                'the data augmentation after this resume will not repeat the uninterrupted run. '
                'Set train_dataloader.persistent_workers=False for an exact resume.'
            )

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        """Set the saved states when the loop is not one that does it; forget old gathers."""
        self._gathered = None
        if self._pending_current is not None:
            current, self._pending_current = self._pending_current, None
            restore_rng_state(current, f'{RNG_STATE_KEY}.current')

    # ----------------------------------------------------------------------------- validation
    def before_val(self, runner) -> None:
        """Remember the training's random states while validation draws from them."""
        self._val_state = capture_rng_state()

    def after_val(self, runner) -> None:
        """Give the training its random states back."""
        if self._val_state is not None:
            state, self._val_state = self._val_state, None
            restore_rng_state(state, 'validation')

    # -------------------------------------------------------------------------------- saving
    def _state(self, runner) -> Dict[str, Any]:
        """This rank's entry: the training's random states, seeds and position."""
        loader = runner.train_dataloader
        sampler = getattr(loader, 'sampler', None)
        init_fn = getattr(loader, 'worker_init_fn', None)
        keywords = init_fn.keywords if isinstance(init_fn, functools.partial) else {}
        return dict(
            current=self._val_state or capture_rng_state(),
            epoch_start=getattr(runner.train_loop, 'epoch_rng_state', None),
            sampler_seed=_int_or_none(getattr(sampler, 'seed', None)),
            sampler_epoch=_int_or_none(getattr(sampler, 'epoch', None)),
            worker_seed=_int_or_none(keywords.get('seed')),
        )

    def _gather(self, runner) -> None:
        if get_world_size() > 1:
            self._gathered = all_gather_object(self._state(runner))

    def before_train_epoch(self, runner) -> None:
        """Forget states gathered for an earlier save."""
        self._gathered = None

    def after_train_iter(
        self, runner, batch_idx: int, data_batch: Any = None, outputs: Optional[dict] = None
    ) -> None:
        """With several ranks, gather their states when a checkpoint hook saves now."""
        if get_world_size() > 1 and any(_saves_after_iter(h, runner) for h in runner.hooks):
            self._gather(runner)

    def after_train_epoch(self, runner) -> None:
        """With several ranks, gather their states for the checkpoints of this epoch's end."""
        self._gather(runner)

    def after_val_epoch(self, runner, metrics: Optional[dict] = None) -> None:
        """With several ranks, gather their states for the best checkpoint."""
        if isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            self._gather(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Add ``rng_state`` (all ranks' entries; rank 0 writes the checkpoint)."""
        if get_world_size() == 1:
            ranks = [self._state(runner)]
        elif self._gathered is not None:
            ranks = self._gathered
        else:
            runner.logger.warning(
                'A checkpoint is saved where RNGStateHook did not gather the random states of '
                'the other ranks: it holds those of rank 0 only.'
            )
            ranks = [self._state(runner)]
        meta = checkpoint.get('meta', {})
        checkpoint[RNG_STATE_KEY] = dict(
            format=_FORMAT,
            epoch=meta.get('epoch'),
            iter=meta.get('iter'),
            world_size=len(ranks),
            ranks=ranks,
        )


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _saves_after_iter(hook: Hook, runner) -> bool:
    """Whether a ``CheckpointHook`` saves in this ``after_train_iter``."""
    if not isinstance(hook, CheckpointHook) or hook.by_epoch:
        return False
    return hook.every_n_train_iters(runner, hook.interval, hook.save_begin) or (
        hook.save_last and hook.is_last_train_iter(runner)
    )
