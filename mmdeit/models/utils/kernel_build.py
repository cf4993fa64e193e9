"""Where mmdeit's C++ kernels (``cpu_kernels.py``) are built and cached, and the cache's upkeep.

PyTorch's extension builder (``torch.utils.cpp_extension.load``) writes a ninja file naming the
sources' and torch's paths, and rebuilds whenever they change. So the build has a folder per
install (:func:`build_directory`): two checkouts or environments on one machine sharing one
folder rebuilt each other's kernels (33-41 s on 2 cores, measured) at every switch. Each folder
records its install (:data:`INSTALL_FILE`); the folders of this host's installs that are gone
(a deleted clone or environment) are removed before a build (:func:`remove_gone_installs`), so
a machine that makes many clones does not keep a build of each. A build lock left by a process
that died while building is removed too (:func:`remove_stale_lock`): the builder would wait for
it forever.
"""

import hashlib
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch
from mmengine.logging import print_log

#: The build folders' common prefix in PyTorch's extension cache.
PREFIX = 'mmdeit_cpu_kernels-'
#: The file in a build folder naming its install: the sources' folder, torch's, and the host
#: that built it (an extension cache in a home shared by a cluster's nodes holds every node's).
INSTALL_FILE = 'install.txt'
#: A build lock older than this (seconds) was left by a process that died while building (a
#: build takes ~45 s): PyTorch's builder would wait for it forever, so it is removed.
STALE_LOCK_SECONDS = 600


def _install_paths(csrc: Path) -> tuple:
    """The two folders that make an install: the kernels' sources and torch's package."""
    return str(csrc.resolve()), str(Path(torch.__file__).resolve().parent)


def build_directory(csrc: Path) -> Path:
    """The build folder of the kernels whose sources are in ``csrc``, made if missing.

    A folder of PyTorch's extension cache (``TORCH_EXTENSIONS_DIR``, else
    ``~/.cache/torch_extensions``) named after the Python and torch versions and a hash of the
    install (the sources' and torch's folders), which it records in :data:`INSTALL_FILE` with
    this host's name.
    """
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get('TORCH_EXTENSIONS_DIR') or get_default_build_root()
    version = f'py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}'
    paths = _install_paths(csrc)
    install = hashlib.sha1('\n'.join(paths).encode()).hexdigest()[:10]
    path = Path(root) / f'{PREFIX}{version}-{install}'
    path.mkdir(parents=True, exist_ok=True)
    record, content = path / INSTALL_FILE, '\n'.join([*paths, socket.gethostname()]) + '\n'
    if not record.is_file() or record.read_text() != content:
        record.write_text(content)
    return path


def remove_gone_installs(build_dir: Path) -> None:
    """Remove the other build folders beside ``build_dir`` whose install, recorded by this host,
    is gone (its sources' or torch's folder no longer exists). Folders without a record (other
    versions' layout) or recorded by another host (whose paths this one may not see) stay."""
    for folder in build_dir.parent.glob(f'{PREFIX}*'):
        record = folder / INSTALL_FILE
        if folder == build_dir or not record.is_file():
            continue
        try:
            *paths, host = record.read_text().split('\n')[:3]
        except OSError:
            continue
        if host != socket.gethostname() or not all(paths):  # a full record names this host
            continue
        if not all(Path(p).is_dir() for p in paths):
            print_log(f'mmdeit: removing the kernels of a removed install: {folder}', 'current')
            shutil.rmtree(folder, ignore_errors=True)


def remove_stale_lock(build_dir: Path) -> None:
    """Remove a build lock left by a dead process (older than :data:`STALE_LOCK_SECONDS`)."""
    lock = build_dir / 'lock'
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        print_log(
            f'mmdeit: removing a stale build lock ({age:.0f} s old): {lock}',
            logger='current',
            level=logging.WARNING,
        )
        lock.unlink(missing_ok=True)
