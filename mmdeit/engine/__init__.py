from .atomic_file_backend import AtomicLocalBackend, atomic_write, register_atomic_local_backend
from .checkpoint_loader import (
    UnsafeCheckpointError,
    register_safe_checkpoint_loader,
    safe_globals,
    safe_load,
)
from .cpu_distributed import setup_cpu_distributed
from .hooks import AtomicCheckpointHook, NanGuardHook
from .optim_wrappers import CPUAmpOptimWrapper

# Checkpoints and other files that mmengine writes to local paths are written atomically from
# the moment mmdeit is imported.
register_atomic_local_backend()

__all__ = [
    'AtomicCheckpointHook',
    'AtomicLocalBackend',
    'CPUAmpOptimWrapper',
    'NanGuardHook',
    'UnsafeCheckpointError',
    'atomic_write',
    'register_atomic_local_backend',
    'register_safe_checkpoint_loader',
    'safe_globals',
    'safe_load',
    'setup_cpu_distributed',
]
