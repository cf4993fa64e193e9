"""mmdeit: DeiT for the OpenMMLab ecosystem.

Importing the package registers its modules in the ``mmdeit`` scope (see
:mod:`mmdeit.registry`).
"""

from . import datasets, models  # noqa: F401  (registers modules)
from .engine import register_safe_checkpoint_loader

register_safe_checkpoint_loader()

__version__ = '0.1.0'
