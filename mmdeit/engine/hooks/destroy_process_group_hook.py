"""Destroy the process group when a run ends well, for tools that mmdeit does not own."""

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmdeit.registry import HOOKS

from ..distributed_exit import destroy_process_group

__all__ = ['DestroyProcessGroupHook']


@HOOKS.register_module()
class DestroyProcessGroupHook(Hook):
    """Destroy the default process group after a successful ``runner.train()`` or ``test()``.

    mmdeit's own tools already do this (:mod:`mmdeit.engine.distributed_exit` explains why: a
    rank that exits with gloo's threads alive can abort with SIGABRT after a finished run). A
    distributed run started by another tool, such as mmdet's or mmseg's ``tools/train.py``
    training an mmdeit backbone, gets the same clean exit from this hook in its config::

        custom_imports = dict(imports=['mmdeit'], allow_failed_imports=False)
        custom_hooks = [dict(type='mmdeit.DestroyProcessGroupHook')]

    mmengine calls ``after_run`` only when the loop ended without an exception, so a failed run
    leaves the group alone, as it must. The hook runs last (priority 'LOWEST'), after every
    other hook's ``after_run``. Only for scripts that run once: after it, the runner cannot run
    another distributed ``train()``/``val()``/``test()`` in the same process (mmdet's and
    mmseg's ``tools/train.py`` and ``tools/test.py`` call one of them and exit); its
    ``runner.model`` is then the unwrapped model.
    """

    priority = 'LOWEST'

    def after_run(self, runner) -> None:
        """Unwrap the runner's model and destroy the default process group (nothing in a
        one-process run).

        The DDP wrapper holds the group (and gloo's threads) through its reducer; the calling
        tool still holds the runner, so the runner's model becomes the wrapped module, and the
        wrapper is freed with the group now rather than at interpreter teardown.
        """
        if is_model_wrapper(runner.model):  # only distributed runs are wrapped
            runner.model = runner.model.module
        if destroy_process_group():
            runner.logger.info('destroyed the process group: the run ended without error')
