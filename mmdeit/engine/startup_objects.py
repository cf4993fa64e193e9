"""Take the objects a tool's imports made out of Python's cyclic garbage collector:
:func:`freeze_startup_objects`.

Importing mmdeit's tools' libraries (torch, mmengine, mmpretrain and, where installed, mmdet
and transformers) makes about 520,000 objects that live until the process ends, and every full
pass of CPython's cyclic garbage collector walks all of them: 0.26 s a pass on a 2-core AMD
EPYC host. At exit the interpreter tears its modules down with several such passes, so a
process spent 1.6-1.7 s ending after its work was done: a fifth of ``tools/infer.py``'s 7.3-7.9
s (``docs/benchmarks.md``, "The tools' exit").

:func:`freeze_startup_objects` collects once, then moves every object alive into the
collector's permanent generation (``gc.freeze()``), which its passes skip; the process then ends
in 0.3-0.6 s. Objects made afterwards (the config, the model, the runner, the data loaders) stay
under the collector as before, and reference counting frees frozen objects as it always does.
What changes: a reference cycle among the frozen objects that becomes garbage later is kept
until the process ends, and at exit the frozen objects' finalizers do not run (the system takes
the memory back; what must happen at exit, logging's flush and close included, runs through
``atexit``, which is unaffected). Python's documentation names the same call for a parent that
forks (here the data loaders' workers): the children's collector passes do not write into the
frozen objects' pages.

It changes the whole process, so importing mmdeit does not call it: mmdeit's tools do (train,
test, infer, export, convert, vis_attention) at their start, once their imports are done, and
``python -m mmdeit`` before any tool it runs; the analysis tools, which time the library as a
script of yours runs it, do not. The environment variable ``MMDEIT_FREEZE_STARTUP=0`` turns it
off (``tools/analysis/tool_exit_time.py`` times the tools with and without).
"""

import gc
import os

__all__ = ['freeze_startup_objects']


def freeze_startup_objects() -> int:
    """Collect garbage once, then freeze every object alive (``gc.freeze()``); nothing where the
    environment sets ``MMDEIT_FREEZE_STARTUP=0``.

    Call it at a tool's start, after its imports and before its work.

    Returns:
        The number of objects in the collector's permanent generation afterwards.

    Raises:
        ValueError: If ``MMDEIT_FREEZE_STARTUP`` is set to something other than 0 or 1.
    """
    switch = os.environ.get('MMDEIT_FREEZE_STARTUP', '1')
    if switch not in ('0', '1'):
        raise ValueError(f'MMDEIT_FREEZE_STARTUP must be 0 (off) or 1 (on), got {switch!r}')
    if switch == '0':
        return gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
