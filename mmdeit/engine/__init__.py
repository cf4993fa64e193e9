"""mmdeit's engine parts. Importing this package registers its hooks, loop and optim wrapper and
changes nothing in mmengine; :func:`setup_engine` turns on the safe checkpoint loader and
atomic local writes (mmdeit's tools and :class:`AtomicCheckpointHook` call it), and
:func:`keep_freed_memory` has glibc keep freed memory for the next tensors and
:func:`freeze_startup_objects` takes the imports' objects out of the garbage collector (mmdeit's
tools call both)."""

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
from .distributed_exit import destroy_process_group, destroy_process_group_on_success
from .engine_setup import engine_is_set_up, setup_engine
from .exact_resume_loop import ExactResumeEpochBasedTrainLoop
from .freed_memory import KEEP_FREED_HELP, freed_memory_setting, keep_freed_memory
from .hooks import (
    AtomicCheckpointHook,
    DestroyProcessGroupHook,
    NanGuardHook,
    RNGStateHook,
    TeacherCheckHook,
)
from .optim_wrappers import CPUAmpOptimWrapper
from .rng_state import RNGStateError, capture_rng_state, check_rng_state, restore_rng_state
from .startup_objects import freeze_startup_objects

__all__ = [
    'KEEP_FREED_HELP',
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'CPUAmpOptimWrapper',
    'DestroyProcessGroupHook',
    'ExactResumeEpochBasedTrainLoop',
    'NanGuardHook',
    'RNGStateError',
    'RNGStateHook',
    'TeacherCheckHook',
    'UnsafeCheckpointError',
    'atomic_write',
    'capture_rng_state',
    'check_rng_state',
    'destroy_process_group',
    'destroy_process_group_on_success',
    'engine_is_set_up',
    'freed_memory_setting',
    'freeze_startup_objects',
    'keep_freed_memory',
    'load_checkpoint_file',
    'register_atomic_local_backend',
    'register_safe_checkpoint_loader',
    'restore_rng_state',
    'safe_globals',
    'safe_load',
    'safe_load_checkpoint',
    'setup_cpu_distributed',
    'setup_engine',
]
