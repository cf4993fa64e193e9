"""mmdeit's engine parts. Importing this package registers its hooks and optim wrapper and
changes nothing in mmengine; :func:`setup_engine` turns on the safe checkpoint loader and
atomic local writes (mmdeit's tools and :class:`AtomicCheckpointHook` call it)."""

from .atomic_file_backend import AtomicLocalBackend, atomic_write, register_atomic_local_backend
from .checkpoint_loader import (
    UnsafeCheckpointError,
    load_checkpoint_file,
    register_safe_checkpoint_loader,
    safe_globals,
    safe_load,
    safe_load_checkpoint,
)
from .cpu_distributed import setup_cpu_distributed
from .engine_setup import engine_is_set_up, setup_engine
from .hooks import AtomicCheckpointHook, NanGuardHook, TeacherCheckHook
from .optim_wrappers import CPUAmpOptimWrapper

__all__ = [
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'CPUAmpOptimWrapper',
    'NanGuardHook',
    'TeacherCheckHook',
    'UnsafeCheckpointError',
    'atomic_write',
    'engine_is_set_up',
    'load_checkpoint_file',
    'register_atomic_local_backend',
    'register_safe_checkpoint_loader',
    'safe_globals',
    'safe_load',
    'safe_load_checkpoint',
    'setup_cpu_distributed',
    'setup_engine',
]
