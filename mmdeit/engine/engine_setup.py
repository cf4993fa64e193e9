"""mmdeit's engine guarantees, turned on explicitly: :func:`setup_engine`.

``import mmdeit`` registers modules and changes nothing in mmengine, so an mmdet or mmseg run
that imports mmdeit for its backbone keeps mmengine's own checkpoint loader, file backend and
``CheckpointHook``. :func:`setup_engine` turns on, for the whole process:

- the safe checkpoint loader (:func:`~mmdeit.engine.register_safe_checkpoint_loader`): local
  checkpoints are read with ``weights_only=True`` and an allow-list, so mmengine's own
  checkpoints resume on torch >= 2.6 and a pickle that would run code is refused;
- atomic local writes (:func:`~mmdeit.engine.register_atomic_local_backend`): a run killed
  while it saves never leaves a half-written checkpoint.

Who calls it:

- mmdeit's tools (``tools/train.py``, ``tools/test.py``, ``tools/demo.py``), before they build
  the Runner;
- a config that names :class:`~mmdeit.engine.AtomicCheckpointHook` (every mmdeit config does,
  through ``configs/_base_/default_runtime.py``; an mmdet or mmseg config run by its own
  tools names it as ``default_hooks = dict(checkpoint=dict(type='mmdeit.AtomicCheckpointHook'))``
  after ``custom_imports = dict(imports=['mmdeit'])``): building the hook calls it, see that
  class for what this covers;
- your own script, before it builds a Runner or loads a checkpoint.
"""

from mmengine.fileio import LocalBackend
from mmengine.fileio.backends import registry_utils
from mmengine.runner.checkpoint import CheckpointLoader

from .atomic_file_backend import AtomicLocalBackend, register_atomic_local_backend
from .checkpoint_loader import _load_from_local, register_safe_checkpoint_loader

__all__ = ['engine_is_set_up', 'setup_engine']


def setup_engine() -> None:
    """Turn on the safe checkpoint loader and atomic local writes in mmengine (idempotent)."""
    register_safe_checkpoint_loader()
    register_atomic_local_backend()


def engine_is_set_up() -> bool:
    """Whether mmengine currently loads and writes local files the way :func:`setup_engine`
    makes it."""
    atomic = all(
        issubclass(backend, AtomicLocalBackend)
        for backend in (
            registry_utils.backends.get('local', LocalBackend),
            registry_utils.prefix_to_backends.get('', LocalBackend),
        )
    )
    return atomic and CheckpointLoader._schemes.get('') is _load_from_local
