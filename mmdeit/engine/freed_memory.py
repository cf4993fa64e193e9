"""Keep the memory a process frees for its next allocations: :func:`keep_freed_memory`.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc's returns freed memory to
the system as soon as the free space at the top of its heap passes a threshold (by default
twice the largest block it has lately served by ``mmap``, at most 64 MiB), and serves large
blocks (up to 32 MiB, adjusted as it goes) by ``mmap``. A forward pass frees most of its
tensors at the end, so the next one touches fresh pages again: each first touch of a 4 KiB
page is a page fault in which the kernel zeroes the page. Measured on an AVX-512 BF16 host
(docs/benchmarks.md, "Freed memory kept"): up to 20,000 page faults per DeiT-S bf16 inference
forward at batch 8, a number that changes from process to process with glibc's adjusted
thresholds; where they occur, keeping the memory made the forward 4-9 % faster.

:func:`keep_freed_memory` fixes both thresholds (``mallopt``): blocks up to ``mmap_threshold``
come from the heap, and freed memory is kept while the heap's free top stays under
``trim_threshold``. The cost is that the process's resident memory does not shrink after a peak
by up to that much. It changes the whole process, so importing mmdeit does not call it: mmdeit's
tools do (``tools/train.py``, ``tools/test.py``, ``tools/infer.py`` and the benchmark; each has an
option to leave glibc's behaviour alone), and a script of yours may. The same setting without
code: ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python ...``; a process
started with either variable (or with ``GLIBC_TUNABLES`` naming ``glibc.malloc``) keeps what it
was given. Nothing happens where the C library is not glibc (macOS, Windows, musl).
"""

import ctypes
import logging
import os
import platform
from typing import Dict, Optional

from mmengine.logging import print_log

__all__ = ['KEEP_FREED_HELP', 'MAX_MMAP_THRESHOLD', 'freed_memory_setting', 'keep_freed_memory']

#: glibc's ``mallopt(M_TRIM_THRESHOLD)`` and ``mallopt(M_MMAP_THRESHOLD)`` parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The largest ``mmap_threshold`` glibc accepts on a 64-bit system (half its heap size).
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: The largest ``trim_threshold``: mallopt takes a C int.
_MAX_INT = 2**31 - 1
#: The environment variables through which a user sets glibc's thresholds themselves.
_USER_SETTINGS = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_')

#: The help of the tools' ``--no-keep-freed-memory`` option.
KEEP_FREED_HELP = (
    "leave glibc's malloc as it is (by default mmdeit's tools have it keep freed memory for the "
    'next tensors: fewer page faults, a resident size that does not shrink after a peak; '
    'mmdeit.engine.keep_freed_memory)'
)

_setting: Optional[Dict[str, int]] = None


def freed_memory_setting() -> Optional[Dict[str, int]]:
    """The thresholds :func:`keep_freed_memory` set in this process (``mmap_threshold``,
    ``trim_threshold`` in bytes), or None if it has not set them."""
    return None if _setting is None else dict(_setting)


def _user_set() -> Optional[str]:
    """The environment variable through which the user set glibc's malloc, or None."""
    for name in _USER_SETTINGS:
        if name in os.environ:
            return name
    if 'glibc.malloc.' in os.environ.get('GLIBC_TUNABLES', ''):
        return 'GLIBC_TUNABLES'
    return None


def _check_bytes(name: str, value: int, limit: int) -> None:
    """Raise naming ``name`` unless ``value`` is an int in [1, ``limit``]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int (bytes), got {type(value).__name__} {value!r}')
    if not 0 < value <= limit:
        raise ValueError(f'{name} must be in [1, {limit}] bytes (what glibc takes), got {value}')


def keep_freed_memory(
    mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 1024**3
) -> bool:
    """Have glibc's ``malloc`` keep freed memory for the next allocations (idempotent).

    Args:
        mmap_threshold: Blocks up to this many bytes come from the heap (larger ones from
            ``mmap``, released when freed). Defaults to 32 MiB, glibc's largest.
        trim_threshold: Freed memory is returned to the system only when the heap's free top
            exceeds this many bytes; at most 2**31 - 1 (a C int). Defaults to 1 GiB.

    Returns:
        True if the thresholds are now set; False where the C library is not glibc, where the
        environment already sets its malloc (then nothing is changed), or where ``mallopt``
        refused them.

    Raises:
        TypeError: A threshold is not an int.
        ValueError: A threshold is not positive or too large (``mmap_threshold`` over
            :data:`MAX_MMAP_THRESHOLD`, ``trim_threshold`` over 2**31 - 1).
    """
    global _setting
    _check_bytes('mmap_threshold', mmap_threshold, MAX_MMAP_THRESHOLD)
    _check_bytes('trim_threshold', trim_threshold, _MAX_INT)
    if platform.libc_ver()[0] != 'glibc':
        return False
    user = _user_set()
    if user is not None:
        print_log(f'malloc: left as {user} sets it', logger='current')
        return False
    try:
        mallopt = ctypes.CDLL('libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, mmap_threshold):  # 1 on success
        return False
    if not mallopt(_M_TRIM_THRESHOLD, trim_threshold):
        return False
    setting = dict(mmap_threshold=mmap_threshold, trim_threshold=trim_threshold)
    if setting != _setting:
        print_log(
            f'malloc keeps freed memory: mmap_threshold={setting["mmap_threshold"]}, '
            f'trim_threshold={setting["trim_threshold"]} bytes',
            logger='current',
            level=logging.DEBUG,
        )
    _setting = setting
    return True
