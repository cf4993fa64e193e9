"""How mmdeit's C++ kernels are built (``mmdeit/models/utils/kernel_build.py`` and
``cpu_kernels.kernels``): the build's folder in PyTorch's extension cache (one per install), the
folders of removed installs cleared, a failed build's fallback, a stale lock.

PyTorch's builder is replaced by a stand-in here: nothing is compiled (the tests run on every
CPU); the real build is exercised by the kernels' own tests where the CPU can run them.
"""

import logging
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from mmdeit.models.utils import cpu_kernels, kernel_build

CSRC = cpu_kernels._CSRC


@pytest.fixture
def logged(monkeypatch):
    """The (message, level) pairs the build logs (through mmengine's ``print_log``)."""
    lines = []

    def print_log(msg, logger=None, level=logging.INFO):
        lines.append((msg, level))

    for module in (cpu_kernels, kernel_build):
        monkeypatch.setattr(module, 'print_log', print_log)
    return lines


@pytest.fixture
def builds(monkeypatch, tmp_path):
    """The kernels switched on, the extension cache in ``tmp_path``, and PyTorch's builder
    replaced by a stand-in that records its arguments (with whether a lock was there) and
    fails as a machine without ninja does."""
    import torch.utils.cpp_extension as cpp_extension

    calls = []

    def load(**kwargs):
        lock = os.path.join(kwargs['build_directory'], 'lock')
        calls.append(dict(kwargs, lock_there=os.path.exists(lock)))
        raise RuntimeError('Ninja is required to load C++ extensions\nmore lines')

    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.setattr(cpp_extension, 'load', load)
    for setting in ('SUPPORTED', 'USE_CPU_KERNELS'):
        monkeypatch.setattr(cpu_kernels, setting, True)
    monkeypatch.setattr(cpu_kernels, '_built', None)
    monkeypatch.setattr(cpu_kernels, '_failed', False)
    return calls


def test_each_install_builds_in_its_own_folder(monkeypatch, tmp_path):
    """PyTorch's builder rebuilds whenever the sources' paths in its ninja file change: two
    checkouts sharing a folder rebuilt each other's kernels at every switch (measured: 33-41 s
    each time). The folder is named after the Python and torch versions and the install."""
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    here = kernel_build.build_directory(CSRC)
    assert here.is_dir() and here.parent == tmp_path
    assert here.name.startswith('mmdeit_cpu_kernels-py')
    assert f'-torch{torch.__version__}-' in here.name
    assert kernel_build.build_directory(CSRC) == here  # the same install: the same folder
    record = (here / kernel_build.INSTALL_FILE).read_text().splitlines()
    torch_dir = str(Path(torch.__file__).resolve().parent)
    assert record == [str(CSRC.resolve()), torch_dir, socket.gethostname()]
    for name in ('other_checkout', 'another_checkout'):
        other = kernel_build.build_directory(tmp_path / name / 'csrc')
        assert other.parent == tmp_path and other != here
        here = other


def test_the_build_is_given_its_folder(builds, tmp_path):
    assert cpu_kernels.kernels() is None
    assert [c['build_directory'] for c in builds] == [str(kernel_build.build_directory(CSRC))]
    assert Path(builds[0]['build_directory']).parent == tmp_path
    assert builds[0]['sources'] == [str(s) for s in cpu_kernels._SOURCES]


def test_the_folders_of_removed_installs_are_cleared_before_a_build(builds, tmp_path, logged):
    """A machine that makes many clones (a CI runner) would keep a build of each: a folder
    whose recorded sources or torch folder is gone is removed; the others stay, those of another
    host too (a home shared by a cluster's nodes: its paths may exist only there)."""
    gone = tmp_path / 'deleted_clone' / 'csrc'
    gone.mkdir(parents=True)
    removed = kernel_build.build_directory(gone)
    (removed / 'mmdeit_cpu_kernels.so').write_bytes(b'a build')
    living = tmp_path / 'living_clone' / 'csrc'
    living.mkdir(parents=True)
    kept = [kernel_build.build_directory(living)]
    kept.append(tmp_path / 'mmdeit_cpu_kernels-py311-torch2.0')  # an older layout: no record
    kept.append(tmp_path / 'another_extension')  # not mmdeit's, with a record of a gone folder
    kept.append(tmp_path / 'mmdeit_cpu_kernels-py311-torch2.0-0123456789')  # another node's
    for folder in kept[1:]:
        folder.mkdir()
    here = socket.gethostname()
    for folder, host in ((kept[2], here), (kept[3], f'not-{here}')):  # their sources are gone
        record = f'{tmp_path / "nowhere"}\n{tmp_path}\n{host}\n'
        (folder / kernel_build.INSTALL_FILE).write_text(record)
    gone.parent.rename(tmp_path / 'moved_clone')  # the clone is gone from where it was built

    assert cpu_kernels.kernels() is None
    assert not removed.exists()
    assert all(folder.is_dir() for folder in kept)
    assert Path(builds[0]['build_directory']).is_dir()  # this install's own
    assert any(str(removed) in m and 'removed install' in m for m, _ in logged)


def test_a_failed_build_warns_once_and_atens_ops_run(builds, logged):
    assert cpu_kernels.kernels() is None
    assert cpu_kernels.kernels() is None
    assert [c['name'] for c in builds] == ['mmdeit_cpu_kernels']  # tried once
    assert any('loading its CPU kernels' in m for m, _ in logged)  # the build is announced
    warnings = [m for m, level in logged if level == logging.WARNING]
    assert len(warnings) == 1
    assert 'could not be built' in warnings[0] and 'Ninja is required' in warnings[0]
    assert 'MMDEIT_CPU_KERNELS=0' in warnings[0]
    with torch.no_grad():
        assert not cpu_kernels.softmax_applies(torch.randn(4, 8).bfloat16())


def test_a_stale_build_lock_is_removed_before_the_build(monkeypatch, builds, logged):
    """A lock left by a process that died while building would make PyTorch's builder wait
    forever: one older than ``STALE_LOCK_SECONDS`` is removed (a fresh one is left alone)."""
    lock = kernel_build.build_directory(CSRC) / 'lock'
    for age, removed in ((kernel_build.STALE_LOCK_SECONDS + 60, True), (5, False)):
        lock.touch()
        os.utime(lock, (time.time() - age, time.time() - age))
        monkeypatch.setattr(cpu_kernels, '_failed', False)  # the failed build tried again
        assert cpu_kernels.kernels() is None
        assert builds[-1]['lock_there'] is not removed
        stale = [m for m, level in logged if 'stale build lock' in m and level == logging.WARNING]
        assert bool(stale) == removed
        logged.clear()
