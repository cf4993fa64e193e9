"""mmdeit: DeiT for the OpenMMLab ecosystem.

Importing the package registers its modules in the ``mmdeit`` scope (see
:mod:`mmdeit.registry`), the ``mmdeit::`` config package, and its recipes by name in
mmpretrain's model zoo (``mmpretrain.list_models``/``get_model``, see
:mod:`mmdeit.apis.model_zoo`); it changes nothing else in mmengine or mmpretrain. The safe
checkpoint loader and atomic checkpoint writes are turned on by
:func:`mmdeit.engine.setup_engine`, which mmdeit's tools and configs (through
``AtomicCheckpointHook``) call. ``mmdeit.get_model(NAME)`` and ``mmdeit.list_models()`` are
the model zoo's own entry points (mmdeit's names only).
"""

from . import apis, datasets, engine, evaluation, models  # noqa: F401  (registers modules)
from .apis import get_model, list_models, register_model_zoo  # noqa: F401  (the model zoo)
from .mim import register_config_package

# The mim convention: configs ship under mmdeit/.mim/configs, so that once mmdeit is imported
# any config can inherit `_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'`.
register_config_package()
# The recipes of model-index.yml by name, for mmpretrain.get_model/list_models and its
# inferencers: a registration in mmpretrain's ModelHub (reads the YAML index, no config).
register_model_zoo()

__version__ = '0.1.0'
