"""Config and checkpoint arguments as users give them: checked, and ``PACKAGE::`` names resolved.

Every entry point that takes a config (``init_model``, ``export_onnx``, the tools ``train``,
``test``, ``infer``, ``export``, ``vis_attention``) reads it through :func:`load_config`, so a
config can be named as a ``_base_`` is (``mmdeit::deit/deit-small_8xb128_in1k.py``, mmengine's
``PACKAGE::path`` convention for installed packages) and a wrong argument is refused where it
is given, naming it: a missing file, or a checkpoint given as the config (CONFIG and CHECKPOINT
swapped), which mmengine would report as an unsupported file type.
"""

import os.path as osp
from pathlib import Path
from typing import Union

from mmengine.config import Config

#: The file types mmengine's ``Config.fromfile`` reads.
CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')


def config_path(config: Union[str, Path], name: str = 'config') -> str:
    """The file of a config argument: a path, or ``PACKAGE::path`` in an installed package's
    configs (resolved as mmengine resolves a ``_base_``; ``import mmdeit`` makes ``mmdeit::``
    resolve in every kind of install).

    Args:
        config: A config path or ``PACKAGE::path``.
        name: The argument's name in error messages. Defaults to 'config'.

    Returns:
        The config file's path.

    Raises:
        FileNotFoundError: No such file (or no such config in the package).
        ValueError: Not a config file type (a checkpoint, for example), or a malformed
            ``PACKAGE::path``.
    """
    config = str(config)
    if '::' in config:
        try:
            path, _ = Config._get_cfg_path(config, '')
        except FileNotFoundError as err:  # mmengine's own message names the file it sought
            raise FileNotFoundError(f'{name} {config} does not exist ({err})') from None
        except (AssertionError, ModuleNotFoundError, ValueError) as err:
            raise ValueError(f'{name} {config!r}: {err}') from None
        if not osp.isfile(path):
            raise FileNotFoundError(f'{name} {config} does not exist (looked for {path})')
    else:
        path = config
        if not osp.isfile(path):
            raise FileNotFoundError(f'{name} {config} does not exist')
    if not path.endswith(CONFIG_SUFFIXES):
        hint = ' (CONFIG and CHECKPOINT swapped?)' if path.endswith(('.pth', '.pt')) else ''
        raise ValueError(
            f'{name} {config} is not a config file (one of {", ".join(CONFIG_SUFFIXES)}){hint}'
        )
    return path


def load_config(config: Union[str, Path, Config], name: str = 'config') -> Config:
    """A :class:`~mmengine.config.Config` from a config argument (see :func:`config_path`);
    a ``Config`` is returned as it is.

    Args:
        config: A config path, ``PACKAGE::path`` or :class:`~mmengine.config.Config`.
        name: The argument's name in error messages. Defaults to 'config'.
    """
    if isinstance(config, Config):
        return config
    if not isinstance(config, (str, Path)):
        raise TypeError(f'{name} must be a path or a Config, got {type(config).__name__}')
    return Config.fromfile(config_path(config, name))


def checkpoint_path(checkpoint: Union[str, Path], name: str = 'checkpoint') -> str:
    """A checkpoint argument, checked: an existing file that is not a config (the arguments
    CONFIG and CHECKPOINT swapped).

    Args:
        checkpoint: The checkpoint's path.
        name: The argument's name in error messages. Defaults to 'checkpoint'.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is a config (or a ``PACKAGE::path`` config name).
    """
    path = str(checkpoint)
    if '::' in path or (path.endswith(CONFIG_SUFFIXES) and osp.isfile(path)):
        raise ValueError(
            f'{name} {path} is a config file, not a checkpoint (CONFIG and CHECKPOINT swapped?)'
        )
    if not osp.isfile(path):
        raise FileNotFoundError(f'{name} {path} does not exist')
    return path
