"""Atomic local file writes for mmengine: a killed run never leaves a half-written file.

mmengine's ``save_checkpoint`` (and so ``Runner.save_checkpoint``, which ``CheckpointHook``
calls) writes local files through ``get_file_backend(path).put``, whose stock
``LocalBackend`` opens the target with ``'wb'`` and writes into it: a run killed during the
write leaves a truncated ``iter_N.pth`` that ``--resume`` then fails on.
:class:`AtomicLocalBackend` writes to a temporary file in the target's folder, flushes and
fsyncs it, then renames it over the target with ``os.replace``, which POSIX guarantees to be
atomic: the target is either the complete old file or the complete new one.

:func:`register_atomic_local_backend` makes it mmengine's backend for local paths. ``import
mmdeit`` does not call it: it is part of :func:`~mmdeit.engine.setup_engine`, which mmdeit's
tools and :class:`~mmdeit.engine.AtomicCheckpointHook` call.
"""

import os
import os.path as osp
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.fileio import io as _fileio_io

__all__ = ['AtomicLocalBackend', 'atomic_write', 'register_atomic_local_backend', 'TMP_SUFFIX']

#: Suffix of the temporary files; a leftover one (``.<name>.<random>.tmp``) is a write that was
#: killed before its ``os.replace``, never a valid file.
TMP_SUFFIX = '.tmp'


def _fsync_dir(folder: str) -> None:
    """Persist a rename in ``folder`` (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    data: Union[bytes, str], filepath: Union[str, Path], encoding: str = 'utf-8'
) -> None:
    """Write ``data`` to ``filepath`` atomically (temp file + fsync + ``os.replace``).

    The folder of ``filepath`` is created if needed. If anything fails (or the process is
    killed) before the final rename, ``filepath`` is left as it was; on an exception the
    temporary file is removed.

    Args:
        data: Bytes, or text that is encoded with ``encoding``.
        filepath: The target file.
        encoding: Encoding of text ``data``. Defaults to 'utf-8'.
    """
    if isinstance(data, str):
        data = data.encode(encoding)
    target = osp.abspath(osp.expanduser(str(filepath)))
    folder = osp.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(target)}.', suffix=TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file with mode 0600; give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put`` and ``put_text`` write atomically.

    Reading, listing and removing are those of ``LocalBackend``.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        """Write bytes to ``filepath`` atomically, creating its folder if needed."""
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        """Write text to ``filepath`` atomically, creating its folder if needed.

        Args:
            obj: The text.
            filepath: The target file.
            encoding: Text encoding. Defaults to 'utf-8'.
        """
        atomic_write(obj, filepath, encoding=encoding)


def register_atomic_local_backend() -> None:
    """Make :class:`AtomicLocalBackend` mmengine's backend for local paths (idempotent).

    It replaces the 'local' backend and the empty prefix (plain paths) in
    ``mmengine.fileio``, so ``get_file_backend('work_dirs/x/iter_2.pth')`` returns it.
    """
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    # Drop stock local backends that ``get_file_backend(enable_singleton=True)`` cached before.
    for key, backend in list(_fileio_io.backend_instances.items()):
        if type(backend) is LocalBackend:
            del _fileio_io.backend_instances[key]
