"""A clean exit from a distributed run: destroy the process group once the run has succeeded.

A process that ends with its default process group still alive leaves the backend's worker
threads (gloo's in particular) running into interpreter teardown, where C++ may call
``std::terminate``: the rank prints ``terminate called without an active exception`` and dies
with SIGABRT after a run that finished, so torchrun and Slurm report the job failed
(pytorch/pytorch PR 179291). The cure is ``torch.distributed.destroy_process_group()`` at the
end of the run, as torchtitan does; and only after a run without error, since destroying the
group while another rank is stuck in a collective can hang instead of exiting.

Destroying the group unregisters it, but the model's ``DistributedDataParallel`` wrapper keeps
a reference to it (its reducer) and with it gloo's threads. A finished mmengine ``Runner`` sits
in reference cycles, so it is freed only by the garbage collector, and without a collection
that can be during interpreter teardown, with gloo's threads alive until then (an abort was
still seen after the group was destroyed, in one of three Slurm training launches of a CI run
on 2026-12-04). So the tools drop their runner before the group is destroyed, and
:func:`destroy_process_group` collects garbage first: the wrapper, its reducer and then the
group are freed while the interpreter is alive.

- mmdeit's tools (``tools/train.py``, ``tools/test.py``, ``python -m mmdeit ...``) wrap their
  run in :func:`destroy_process_group_on_success`.
- Another tool (mmdet's or mmseg's ``tools/train.py`` training an mmdeit backbone) gets the
  same from :class:`~mmdeit.engine.hooks.DestroyProcessGroupHook` in its config.
"""

import gc
from contextlib import contextmanager
from typing import Iterator

import torch.distributed as torch_dist

__all__ = ['destroy_process_group', 'destroy_process_group_on_success']


def destroy_process_group() -> bool:
    """Collect garbage (what still holds the group only through reference cycles, such as a
    finished runner's DDP wrapper), then destroy the default process group, if one is
    initialised.

    Returns:
        True if a process group was destroyed, False if there was none (a one-process run).
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return False
    gc.collect()
    torch_dist.destroy_process_group()
    return True


@contextmanager
def destroy_process_group_on_success() -> Iterator[None]:
    """Run the block; when it ends without an exception, destroy the default process group.

    An exception propagates with the group left alone (destroying it while a peer waits in a
    collective can hang; the launcher stops the other ranks of a failed job).

    Drop the runner inside the block (as below, or ``del runner``): one still referenced when
    the block ends keeps its DDP wrapper, and the group, alive until interpreter teardown.

    Example::

        with destroy_process_group_on_success():
            setup_cpu_distributed(cfg)
            Runner.from_cfg(cfg).train()
    """
    yield
    destroy_process_group()
