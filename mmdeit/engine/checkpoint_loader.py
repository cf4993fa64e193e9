"""Safe checkpoint loading for mmengine on torch >= 2.6.

mmengine 0.10.7 calls ``torch.load(filename, map_location)``; since torch 2.6 that means
``weights_only=True``, which refuses mmengine's own checkpoints (they hold a
``HistoryBuffer`` and numpy arrays in ``message_hub``), so ``--resume`` breaks. Passing
``weights_only=False`` would unpickle arbitrary code from any downloaded file. Instead, local
checkpoints are loaded with ``weights_only=True`` and an allow-list of exactly the extra
classes an mmengine/mmpretrain checkpoint contains. Anything else is refused with
:class:`UnsafeCheckpointError`; nothing falls back to unsafe unpickling.

:func:`register_safe_checkpoint_loader` registers the loader for local paths in mmengine's
``CheckpointLoader``, which ``load_checkpoint``, ``Runner.resume``, ``load_from`` and
``init_cfg=dict(type='Pretrained')`` all go through. ``import mmdeit`` does not call it: it is
part of :func:`~mmdeit.engine.setup_engine`, which mmdeit's tools and
:class:`~mmdeit.engine.AtomicCheckpointHook` call. Code that must read local checkpoints safely
whoever set mmengine up calls :func:`load_checkpoint_file` or :func:`safe_load_checkpoint`,
which use :func:`safe_load` for local paths in any case.
"""

import os.path as osp
import pickle
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint_to_model
from torch import nn

__all__ = [
    'UnsafeCheckpointError',
    'load_checkpoint_file',
    'register_safe_checkpoint_loader',
    'safe_globals',
    'safe_load',
    'safe_load_checkpoint',
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects outside the allow-list (it could run code on load)."""


_STATISTICS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(owner: Any, name: str) -> Any:
    """Stands in for ``getattr`` while unpickling, resolving nothing but HistoryBuffer's
    default statistics methods (a HistoryBuffer pickles ``getattr(HistoryBuffer, 'mean')``).

    A general ``getattr`` would hand a crafted file a way to reach arbitrary attributes.
    """
    if owner is HistoryBuffer and name in _STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({owner!r}, {name!r}); only HistoryBuffer.{_STATISTICS} '
        f'are allowed'
    )


def safe_globals() -> List[Any]:
    """The classes and functions, beyond torch's defaults, that a checkpoint may reference.

    ``message_hub`` holds :class:`HistoryBuffer` objects whose state is numpy arrays and
    scalars (numpy pickles those through ``_reconstruct``/``scalar``, ``ndarray``, ``dtype``
    and dtype classes) and references to its statistics methods (through ``getattr``, which is
    replaced by the restricted :func:`_history_buffer_getattr`).
    """
    multiarray = np.core.multiarray if hasattr(np, 'core') else np._core.multiarray
    dtype_classes = [
        type(np.dtype(t))
        for t in (
            np.float64,
            np.float32,
            np.float16,
            np.int64,
            np.int32,
            np.int16,
            np.int8,
            np.uint8,
            np.bool_,
        )
    ]
    return [
        HistoryBuffer,
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        *dtype_classes,
        (_history_buffer_getattr, 'builtins.getattr'),
    ]


def safe_load(filename: str, map_location: Optional[Any] = None) -> Any:
    """``torch.load`` a local file with ``weights_only=True`` and the allow-list above.

    Args:
        filename: Path of the checkpoint.
        map_location: As in :func:`torch.load`. Defaults to None.

    Raises:
        FileNotFoundError: The file does not exist.
        UnsafeCheckpointError: The file references a class outside the allow-list.
        RuntimeError: The file is truncated or not a torch checkpoint.
    """
    filename = osp.expanduser(str(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} can not be found')
    try:
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'Refused to load checkpoint {filename}: it references objects that are not on '
            f"mmdeit's allow-list of checkpoint contents, so loading it could execute code. "
            f'If you trust the file, convert it to a plain state dict yourself. Details: {err}'
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError) as err:
        raise RuntimeError(
            f'Could not read checkpoint {filename}: it is truncated or not a torch checkpoint '
            f'({type(err).__name__}: {err})'
        ) from None


def _load_from_local(filename: str, map_location: Optional[Any] = None) -> Any:
    return safe_load(filename, map_location)


def register_safe_checkpoint_loader() -> None:
    """Make mmengine load local checkpoints through :func:`safe_load` (idempotent)."""
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)


def _is_local(filename: str) -> bool:
    # Every other scheme mmengine knows (http://, s3://, open-mmlab://, ...) has a '://'.
    return '://' not in str(filename)


def load_checkpoint_file(
    filename: str, map_location: Optional[Any] = None, logger: Any = 'current'
) -> Any:
    """Read a checkpoint as mmengine's ``CheckpointLoader.load_checkpoint`` does, except that a
    local path is always read with :func:`safe_load`, whether or not
    :func:`register_safe_checkpoint_loader` has run.

    Args:
        filename: Local path, or a URL with a scheme mmengine knows (``https://``, ...).
        map_location: As in :func:`torch.load`. Defaults to None.
        logger: Logger for mmengine's remote loaders. Defaults to 'current'.

    Raises:
        FileNotFoundError, UnsafeCheckpointError, RuntimeError: As :func:`safe_load`.
    """
    if _is_local(filename):
        return safe_load(filename, map_location)
    return CheckpointLoader.load_checkpoint(filename, map_location=map_location, logger=logger)


def safe_load_checkpoint(
    model: nn.Module,
    filename: str,
    map_location: Optional[Any] = None,
    strict: bool = False,
    logger: Any = None,
    revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),),
) -> dict:
    """mmengine's ``load_checkpoint(model, filename, ...)``, reading local files with
    :func:`safe_load` (through :func:`load_checkpoint_file`).

    Args:
        model: The module to load the weights into.
        filename: Local path or URL of the checkpoint.
        map_location: As in :func:`torch.load`. Defaults to None.
        strict: Whether the keys must match exactly. Defaults to False.
        logger: Logger for the key mismatch report. Defaults to None.
        revise_keys: ``(pattern, replacement)`` regex pairs applied to the state dict keys.
            Defaults to stripping a ``module.`` prefix.

    Returns:
        The loaded checkpoint.
    """
    checkpoint = load_checkpoint_file(filename, map_location, logger or 'current')
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f'No state_dict found in checkpoint file {filename}')
    return _load_checkpoint_to_model(model, checkpoint, strict, logger, list(revise_keys))
