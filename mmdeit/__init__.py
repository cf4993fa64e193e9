"""mmdeit: DeiT for the OpenMMLab ecosystem.

Importing the package registers its modules in the ``mmdeit`` scope (see
:mod:`mmdeit.registry`).
"""

from . import apis, datasets, models  # noqa: F401  (registers modules)
from .engine import register_safe_checkpoint_loader
from .mim import register_config_package

register_safe_checkpoint_loader()
# The mim convention: configs ship under mmdeit/.mim/configs, so that once mmdeit is imported
# any config can inherit `_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'`.
register_config_package()

__version__ = '0.1.0'
