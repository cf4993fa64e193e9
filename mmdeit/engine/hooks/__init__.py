from .atomic_checkpoint_hook import LAST_CHECKPOINT, AtomicCheckpointHook
from .nan_guard_hook import NanGuardHook
from .teacher_check_hook import TeacherCheckHook

__all__ = ['AtomicCheckpointHook', 'LAST_CHECKPOINT', 'NanGuardHook', 'TeacherCheckHook']
