"""How mmdeit's C++ kernels are built (``mmdeit/models/utils/cpu_kernels.py``): the build's
folder in PyTorch's extension cache (one per install), a failed build's fallback, a stale lock.

PyTorch's builder is replaced by a stand-in here: nothing is compiled (the tests run on every
CPU); the real build is exercised by the kernels' own tests where the CPU can run them.
"""

import logging
import os
import time
from pathlib import Path

import pytest
import torch

from mmdeit.models.utils import cpu_kernels


@pytest.fixture
def logged(monkeypatch):
    """The (message, level) pairs the module logs (through mmengine's ``print_log``)."""
    lines = []
    monkeypatch.setattr(
        cpu_kernels,
        'print_log',
        lambda msg, logger=None, level=logging.INFO: lines.append((msg, level)),
    )
    return lines


def test_each_install_builds_in_its_own_folder(monkeypatch, tmp_path):
    """PyTorch's builder rebuilds whenever the sources' paths in its ninja file change: two
    checkouts sharing a folder rebuilt each other's kernels at every switch (measured: 33-41 s
    each time). The folder is named after the Python and torch versions and the install."""
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    here = cpu_kernels._build_directory()
    assert here.is_dir() and here.parent == tmp_path
    assert here.name.startswith('mmdeit_cpu_kernels-py')
    assert f'-torch{torch.__version__}-' in here.name
    assert cpu_kernels._build_directory() == here  # the same install: the same folder
    for name in ('other_checkout', 'another_checkout'):
        monkeypatch.setattr(cpu_kernels, '_CSRC', tmp_path / name / 'csrc')
        other = cpu_kernels._build_directory()
        assert other.parent == tmp_path and other != here
        here = other


def test_the_build_is_given_its_folder(monkeypatch, tmp_path):
    """The folder above is the one PyTorch's builder is told to build in."""
    import torch.utils.cpp_extension as cpp_extension

    seen = []

    def load(**kwargs):
        seen.append(kwargs['build_directory'])
        raise RuntimeError('stop here')

    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.setattr(cpp_extension, 'load', load)
    for setting in ('SUPPORTED', 'USE_CPU_KERNELS'):
        monkeypatch.setattr(cpu_kernels, setting, True)
    monkeypatch.setattr(cpu_kernels, '_built', None)
    monkeypatch.setattr(cpu_kernels, '_failed', False)
    assert cpu_kernels.kernels() is None
    assert seen == [str(cpu_kernels._build_directory())]
    assert Path(seen[0]).parent == tmp_path


def test_a_failed_build_warns_once_and_atens_ops_run(monkeypatch, logged):
    import torch.utils.cpp_extension as cpp_extension

    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs['name'])
        raise RuntimeError('Ninja is required to load C++ extensions\nmore lines')

    monkeypatch.setattr(cpp_extension, 'load', failing_load)
    monkeypatch.setattr(cpu_kernels, 'SUPPORTED', True)
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
    monkeypatch.setattr(cpu_kernels, '_built', None)
    monkeypatch.setattr(cpu_kernels, '_failed', False)
    assert cpu_kernels.kernels() is None
    assert cpu_kernels.kernels() is None
    assert calls == ['mmdeit_cpu_kernels']  # tried once
    assert any('loading its CPU kernels' in m for m, _ in logged)  # the build is announced
    warnings = [m for m, level in logged if level == logging.WARNING]
    assert len(warnings) == 1
    assert 'could not be built' in warnings[0] and 'Ninja is required' in warnings[0]
    assert 'MMDEIT_CPU_KERNELS=0' in warnings[0]
    with torch.no_grad():
        assert not cpu_kernels.softmax_applies(torch.randn(4, 8).bfloat16())


def test_a_stale_build_lock_is_removed_before_the_build(monkeypatch, tmp_path, logged):
    """A lock left by a process that died while building would make PyTorch's builder wait
    forever: one older than ``STALE_LOCK_SECONDS`` is removed (a fresh one is left alone)."""
    import torch.utils.cpp_extension as cpp_extension

    seen = []

    def load(**kwargs):
        lock = os.path.join(kwargs['build_directory'], 'lock')
        seen.append((kwargs['build_directory'], os.path.exists(lock)))
        raise RuntimeError('stop here')

    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.setattr(cpp_extension, 'load', load)
    for setting in ('SUPPORTED', 'USE_CPU_KERNELS'):
        monkeypatch.setattr(cpu_kernels, setting, True)
    build_dir = cpu_kernels._build_directory()
    assert build_dir.parent == tmp_path and f'torch{torch.__version__}' in build_dir.name
    lock = build_dir / 'lock'
    for age, removed in ((cpu_kernels.STALE_LOCK_SECONDS + 60, True), (5, False)):
        lock.touch()
        os.utime(lock, (time.time() - age, time.time() - age))
        monkeypatch.setattr(cpu_kernels, '_built', None)
        monkeypatch.setattr(cpu_kernels, '_failed', False)
        assert cpu_kernels.kernels() is None
        assert seen[-1] == (str(build_dir), not removed)
        stale = [m for m, level in logged if 'stale build lock' in m and level == logging.WARNING]
        assert bool(stale) == removed
        logged.clear()
