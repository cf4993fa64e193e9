"""freeze_startup_objects: the tools' imports left out of the garbage collector's passes."""

import gc
import subprocess
import sys
import weakref

import pytest

from mmdeit.__main__ import TOOLS
from mmdeit.engine import freeze_startup_objects

# As a user runs the tools, each with ``--help`` (argparse exits in ``main``, after the tool's
# start): as a script (``python tools/train.py``: run_path), then through ``python -m mmdeit``
# (its ``main``); the objects frozen then are counted, then thawed again.
TOOLS_AS_A_USER_RUNS_THEM = """
import gc, os, runpy, sys
from mmdeit.__main__ import TOOLS, TOOLS_DIR, main

def run(way, tool, call):
    try:
        call()
    except SystemExit as exit:
        assert exit.code in (0, None), (way, tool, exit.code)
    print('frozen-by-start', way, tool, gc.get_freeze_count(), flush=True)
    gc.unfreeze()

for tool in sys.argv[1:]:
    path = os.path.join(TOOLS_DIR, TOOLS[tool])
    sys.argv = [path, '--help']
    run('script', tool, lambda: runpy.run_path(path, run_name='__main__'))
for tool in TOOLS:
    run('module', tool, lambda: main([tool, '--help']))
"""
SCRIPTS = ('train', 'test', 'infer', 'export', 'convert', 'vis_attention')


class _Node:
    """A reference-cycle member that can be watched through a weak reference."""

    def __init__(self) -> None:
        self.self = self


@pytest.fixture
def thawed():
    """Everything frozen during the test is put back under the collector afterwards (the
    pytest process goes on)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_objects_alive_are_frozen_and_later_ones_stay_collected(thawed):
    before = _Node()
    watch_before = weakref.ref(before)
    count = freeze_startup_objects()
    assert count == gc.get_freeze_count() > 100_000  # torch, mmengine, mmpretrain ...
    after = _Node()
    watch_after = weakref.ref(after)
    del before, after
    gc.collect()
    assert watch_after() is None  # made after the freeze: the collector frees the cycle
    assert watch_before() is not None  # frozen: kept until the process ends
    gc.unfreeze()
    gc.collect()
    assert watch_before() is None


def test_garbage_made_before_is_collected_not_frozen(thawed):
    garbage = _Node()
    watch = weakref.ref(garbage)
    del garbage
    freeze_startup_objects()
    assert watch() is None


def test_the_switch_turns_it_off(thawed, monkeypatch):
    monkeypatch.setenv('MMDEIT_FREEZE_STARTUP', '0')
    assert freeze_startup_objects() == gc.get_freeze_count() == 0


@pytest.mark.parametrize('value', ['off', 'false', ''])
def test_a_bad_switch_value_is_refused_naming_the_variable(thawed, monkeypatch, value):
    monkeypatch.setenv('MMDEIT_FREEZE_STARTUP', value)
    with pytest.raises(ValueError, match='MMDEIT_FREEZE_STARTUP must be 0 .off. or 1 .on.'):
        freeze_startup_objects()
    assert gc.get_freeze_count() == 0


def test_each_tool_freezes_at_its_start_as_a_user_runs_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-c', TOOLS_AS_A_USER_RUNS_THEM, *SCRIPTS],
        cwd=tmp_path,  # outside the checkout
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split() for line in proc.stdout.splitlines()]
    frozen = {tuple(w[1:3]): int(w[3]) for w in lines if w and w[0] == 'frozen-by-start'}
    assert {tool for way, tool in frozen if way == 'script'} == set(SCRIPTS), proc.stdout[-3000:]
    assert {tool for way, tool in frozen if way == 'module'} == set(TOOLS), proc.stdout[-3000:]
    for (way, tool), count in frozen.items():
        assert count > 100_000, (way, tool, count)  # the imports' objects, not only a few
