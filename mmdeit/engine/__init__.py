from .checkpoint_loader import (
    UnsafeCheckpointError,
    register_safe_checkpoint_loader,
    safe_globals,
    safe_load,
)

__all__ = ['UnsafeCheckpointError', 'register_safe_checkpoint_loader', 'safe_globals', 'safe_load']
