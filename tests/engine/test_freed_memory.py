"""``keep_freed_memory``: glibc's malloc keeps freed memory, as mmdeit's tools set it.

The behaviour is checked in fresh processes (the setting is the whole process's). glibc's own
thresholds move with what a process did before, so the baseline is made certain: a process first
sets small thresholds itself (``mallopt``, 128 KiB: every 16 MiB block from ``mmap``), where a
step that allocates and frees 128 MiB of tensors page-faults through all of it again; after
``keep_freed_memory()`` the same steps reuse the memory.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from mmdeit.engine import freed_memory, freed_memory_setting, keep_freed_memory
from mmdeit.engine.freed_memory import MAX_MMAP_THRESHOLD
from tools import infer as infer_tool
from tools import test as test_tool
from tools import train as train_tool

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc malloc only')

STEPS = textwrap.dedent(
    """
    import ctypes, json, resource, sys
    import torch
    from mmdeit.engine import freed_memory_setting, keep_freed_memory

    if sys.argv[1] in ('trim', 'trim+keep'):  # glibc returns every freed block at once
        mallopt = ctypes.CDLL('libc.so.6').mallopt
        assert mallopt(-3, 128 * 1024) == 1 and mallopt(-1, 128 * 1024) == 1
    kept = keep_freed_memory() if sys.argv[1].endswith('keep') else None

    def step():  # eight 16 MiB tensors, each touched, then all freed
        tensors = [torch.ones(1 << 22) for _ in range(8)]
        del tensors

    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps(dict(kept=kept, setting=freed_memory_setting(), faults=faults)))
    """
)


def _steps(mode: str, **env) -> dict:
    """Run :data:`STEPS` in a fresh process with glibc's malloc variables cleared, plus ``env``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith('MALLOC_') and k not in ('GLIBC_TUNABLES', 'LD_PRELOAD')
    }
    out = subprocess.run(
        [sys.executable, '-c', STEPS, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_serves_the_next_steps_without_page_faults():
    trimming = _steps('trim')  # 5 steps x 32,768 fresh pages
    assert trimming['setting'] is None and trimming['faults'] > 5 * 16384
    kept = _steps('trim+keep')
    assert kept['kept'] is True
    assert kept['setting'] == dict(mmap_threshold=MAX_MMAP_THRESHOLD, trim_threshold=1024**3)
    assert kept['faults'] < 200  # the pages freed by one step serve the next


@glibc_only
@pytest.mark.parametrize(
    'variable', ['MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_', 'GLIBC_TUNABLES']
)
def test_a_process_told_how_to_malloc_keeps_it(variable):
    value = 'glibc.malloc.trim_threshold=131072' if variable == 'GLIBC_TUNABLES' else '131072'
    told = _steps('keep', **{variable: value})
    assert told['kept'] is False and told['setting'] is None
    assert told['faults'] > 5 * 16384  # the user's setting still trims


@pytest.mark.parametrize(
    'kwargs, error, field',
    [
        (dict(mmap_threshold=0), ValueError, 'mmap_threshold'),
        (dict(mmap_threshold=MAX_MMAP_THRESHOLD + 1), ValueError, 'mmap_threshold'),
        (dict(trim_threshold=-1), ValueError, 'trim_threshold'),
        (dict(trim_threshold=2**31), ValueError, 'trim_threshold'),
        (dict(mmap_threshold=1.5), TypeError, 'mmap_threshold'),
        (dict(trim_threshold=True), TypeError, 'trim_threshold'),
        (dict(trim_threshold='1G'), TypeError, 'trim_threshold'),
    ],
)
def test_bad_thresholds_are_refused_naming_the_argument(kwargs, error, field):
    with pytest.raises(error, match=field):
        keep_freed_memory(**kwargs)


@pytest.mark.parametrize(
    'tool, argv',
    [
        (train_tool, ['no_such_config.py']),
        (test_tool, ['no_such_config.py', 'no_such.pth']),
        (infer_tool, ['img.png', 'no_such_config.py', 'no_such.pth']),
    ],
    ids=['train', 'test', 'infer'],
)
@pytest.mark.parametrize('flag', [False, True])
def test_the_tools_keep_freed_memory_unless_told_not_to(monkeypatch, tmp_path, tool, argv, flag):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'img.png').touch()  # infer checks its image before anything else
    calls = []
    monkeypatch.setattr(tool, 'keep_freed_memory', lambda: calls.append(1))
    with pytest.raises((FileNotFoundError, OSError, SystemExit)):  # the missing config
        tool.main([*argv, *(['--no-keep-freed-memory'] if flag else [])])
    assert calls == ([] if flag else [1])


class _FakeMallopt:
    """glibc's ``mallopt`` as :func:`keep_freed_memory` calls it, recording its calls."""

    def __init__(self, result: int):
        self.calls, self.result = [], result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.mark.parametrize('result', [1, 0], ids=['taken', 'refused'])
def test_both_thresholds_go_to_mallopt(monkeypatch, result):
    mallopt = _FakeMallopt(result)
    monkeypatch.setattr(freed_memory.platform, 'libc_ver', lambda: ('glibc', '2.35'))
    monkeypatch.setattr(freed_memory.ctypes, 'CDLL', lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(freed_memory, '_setting', None)
    for name in (*freed_memory._USER_SETTINGS, 'GLIBC_TUNABLES'):
        monkeypatch.delenv(name, raising=False)
    kept = keep_freed_memory(mmap_threshold=1 << 20, trim_threshold=1 << 28)
    if result:  # M_MMAP_THRESHOLD (-3), then M_TRIM_THRESHOLD (-1)
        assert kept is True and mallopt.calls == [(-3, 1 << 20), (-1, 1 << 28)]
        assert freed_memory_setting() == dict(mmap_threshold=1 << 20, trim_threshold=1 << 28)
    else:  # refused: nothing is reported as set
        assert kept is False and mallopt.calls == [(-3, 1 << 20)]
        assert freed_memory_setting() is None
