"""mmdeit's configs as an mmengine config package: ``_base_ = 'mmdeit::deit/...'``.

mmengine resolves ``PACKAGE::path`` bases only for the packages in its table
``MODULE2PACKAGE``, and finds the package's folder with ``get_installed_path``, which joins
the distribution's location with the package name. That is right for an ordinary install
(``site-packages/mmdeit/.mim/configs``) but wrong for an editable one (``pip install -e .``,
``uv sync``): the distribution's metadata lies in ``site-packages`` while the code stays in
the checkout, so mmengine looks for ``site-packages/mmdeit/.mim`` and fails.

:func:`register_config_package` adds mmdeit to the table and answers mmengine's question for
the ``mmdeit`` package alone with the folder of the imported package, which holds ``.mim``
in every kind of install. Other packages are looked up exactly as before. It is run when
mmdeit is imported, since a config's ``_base_`` is resolved before anything the config
names (``custom_imports``) is imported.
"""

import functools
import os.path as osp
from typing import Callable

from mmengine.config import config as mmengine_config
from mmengine.config.utils import MODULE2PACKAGE

PACKAGE = 'mmdeit'
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))


def _resolving_mmdeit(get_installed_path: Callable[[str], str]) -> Callable[[str], str]:
    @functools.wraps(get_installed_path)
    def wrapper(package: str) -> str:
        if package == PACKAGE:
            return PACKAGE_DIR
        return get_installed_path(package)

    wrapper.resolves_mmdeit = True
    return wrapper


def register_config_package() -> None:
    """Make ``mmdeit::`` config bases resolve, in ordinary and editable installs alike."""
    MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    current = mmengine_config.get_installed_path
    if not getattr(current, 'resolves_mmdeit', False):
        mmengine_config.get_installed_path = _resolving_mmdeit(current)
