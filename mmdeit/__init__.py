"""mmdeit: DeiT for the OpenMMLab ecosystem.

Importing the package registers its modules in the ``mmdeit`` scope (see
:mod:`mmdeit.registry`) and the ``mmdeit::`` config package; it changes nothing else in
mmengine. The safe checkpoint loader and atomic checkpoint writes are turned on by
:func:`mmdeit.engine.setup_engine`, which mmdeit's tools and configs (through
``AtomicCheckpointHook``) call.
"""

from . import apis, datasets, engine, models  # noqa: F401  (registers modules)
from .mim import register_config_package

# The mim convention: configs ship under mmdeit/.mim/configs, so that once mmdeit is imported
# any config can inherit `_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'`.
register_config_package()

__version__ = '0.1.0'
