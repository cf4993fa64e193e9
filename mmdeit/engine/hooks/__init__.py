from .atomic_checkpoint_hook import LAST_CHECKPOINT, AtomicCheckpointHook
from .destroy_process_group_hook import DestroyProcessGroupHook
from .nan_guard_hook import NanGuardHook
from .rng_state_hook import RNG_STATE_KEY, RNGStateHook
from .teacher_check_hook import TeacherCheckHook

__all__ = [
    'AtomicCheckpointHook',
    'DestroyProcessGroupHook',
    'LAST_CHECKPOINT',
    'NanGuardHook',
    'RNG_STATE_KEY',
    'RNGStateHook',
    'TeacherCheckHook',
]
