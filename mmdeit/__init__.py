"""mmdeit: DeiT for the OpenMMLab ecosystem.

Importing the package registers its modules in the ``mmdeit`` scope (see
:mod:`mmdeit.registry`).
"""

from mmengine.config.utils import MODULE2PACKAGE

from . import apis, datasets, models  # noqa: F401  (registers modules)
from .engine import register_safe_checkpoint_loader

register_safe_checkpoint_loader()
# The mim convention: configs ship under mmdeit/.mim/configs, so that once mmdeit is imported
# any config can inherit `_base_ = 'mmdeit::deit/deit-small_8xb128_in1k.py'`.
MODULE2PACKAGE.setdefault('mmdeit', 'mmdeit')

__version__ = '0.1.0'
