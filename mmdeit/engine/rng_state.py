"""The process's random number generator states, as plain checkpoint contents.

:func:`capture_rng_state` reads torch's CPU generator (and each CUDA device's, when CUDA is
available), numpy's global ``RandomState`` and python's ``random`` into a dict of tensors,
ints, floats and ``None``: what ``torch.load(weights_only=True)`` reads without any addition
to mmdeit's allow-list (no numpy object is pickled). :func:`restore_rng_state` checks every
field first, raising :class:`RNGStateError` that names the bad one, and only then sets the
generators, so a bad entry changes nothing.
"""

import logging
import random
from typing import Any, Dict, List, Mapping

import numpy as np
import torch
from mmengine.logging import print_log

__all__ = ['RNGStateError', 'capture_rng_state', 'check_rng_state', 'restore_rng_state']

_MT_WORDS = 624  # the Mersenne Twister state of numpy's RandomState and python's random
_RANDOM_VERSION = 3  # random.getstate()'s version since python 3.2


class RNGStateError(ValueError):
    """A saved random state is corrupt or does not fit this process; the message names the
    field."""


def capture_rng_state() -> Dict[str, Any]:
    """The current random states of this process.

    Returns:
        ``{'torch': uint8 tensor, 'numpy': {'keys', 'pos', 'has_gauss', 'cached_gaussian'},
        'random': {'version', 'state', 'gauss_next'}, 'cuda': [uint8 tensor per device]}``
        (``cuda`` only when CUDA is available), tensors on the CPU.
    """
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        'torch': torch.get_rng_state(),
        'numpy': {
            'keys': torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            'pos': int(pos),
            'has_gauss': int(has_gauss),
            'cached_gaussian': float(cached_gaussian),
        },
        'random': {
            'version': int(version),
            'state': torch.tensor(internal, dtype=torch.int64),
            'gauss_next': None if gauss_next is None else float(gauss_next),
        },
    }
    if torch.cuda.is_available():
        state['cuda'] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def _fail(field: str, message: str) -> None:
    raise RNGStateError(f'{field}: {message}')


def _field(state: Mapping, key: str, where: str) -> Any:
    if not isinstance(state, Mapping):
        _fail(where, f'expected a dict, got {type(state).__name__}')
    if key not in state:
        _fail(f'{where}.{key}', 'missing')
    return state[key]


def _int(state: Mapping, key: str, where: str, low: int, high: int) -> int:
    value = _field(state, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(f'{where}.{key}', f'expected an int in [{low}, {high}], got {value!r}')
    return value


def _words(state: Mapping, key: str, where: str, count: int) -> torch.Tensor:
    value = _field(state, key, where)
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 1:
        _fail(f'{where}.{key}', f'expected a 1-d int64 tensor, got {_describe(value)}')
    if value.numel() != count:
        _fail(f'{where}.{key}', f'expected {count} values, got {value.numel()}')
    value = value.cpu()
    if bool(((value < 0) | (value >= 2**32)).any()):
        _fail(f'{where}.{key}', 'values outside [0, 2**32)')
    return value


def _byte_tensor(value: Any, field: str, numel: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
        _fail(field, f'expected a 1-d uint8 tensor, got {_describe(value)}')
    if value.numel() != numel:
        _fail(field, f'expected {numel} bytes, got {value.numel()}')
    return value.cpu()


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f'a {value.dim()}-d {value.dtype} tensor'
    return type(value).__name__


def check_rng_state(state: Any, where: str = 'rng_state') -> Dict[str, Any]:
    """Check a state from :func:`capture_rng_state` field by field.

    Args:
        state: The saved state.
        where: Name of ``state`` in the messages. Defaults to 'rng_state'.

    Returns:
        The state in the form the generators take: ``torch`` (uint8 CPU tensor), ``numpy``
        (the tuple of ``np.random.set_state``), ``random`` (the tuple of
        ``random.setstate``) and ``cuda`` (a list of uint8 CPU tensors, or None).

    Raises:
        RNGStateError: A field is missing, of the wrong type or size, or out of range.
    """
    torch_state = _byte_tensor(
        _field(state, 'torch', where), f'{where}.torch', torch.get_rng_state().numel()
    )
    np_state = _field(state, 'numpy', where)
    np_where = f'{where}.numpy'
    keys = _words(np_state, 'keys', np_where, _MT_WORDS)
    pos = _int(np_state, 'pos', np_where, 0, _MT_WORDS)
    has_gauss = _int(np_state, 'has_gauss', np_where, 0, 1)
    gaussian = _field(np_state, 'cached_gaussian', np_where)
    if isinstance(gaussian, bool) or not isinstance(gaussian, (int, float)):
        _fail(f'{np_where}.cached_gaussian', f'expected a float, got {gaussian!r}')
    numpy_tuple = ('MT19937', keys.numpy().astype(np.uint32), pos, has_gauss, float(gaussian))

    py_state = _field(state, 'random', where)
    py_where = f'{where}.random'
    version = _int(py_state, 'version', py_where, _RANDOM_VERSION, _RANDOM_VERSION)
    internal = _words(py_state, 'state', py_where, _MT_WORDS + 1)
    if int(internal[-1]) > _MT_WORDS:
        _fail(f'{py_where}.state', f'position {int(internal[-1])} is past {_MT_WORDS}')
    gauss_next = _field(py_state, 'gauss_next', py_where)
    if gauss_next is not None and (
        isinstance(gauss_next, bool) or not isinstance(gauss_next, (int, float))
    ):
        _fail(f'{py_where}.gauss_next', f'expected a float or None, got {gauss_next!r}')
    random_tuple = (version, tuple(int(v) for v in internal.tolist()), gauss_next)

    cuda = state.get('cuda')
    cuda_states = None
    if cuda is not None:
        if not isinstance(cuda, (list, tuple)):
            _fail(f'{where}.cuda', f'expected a list of tensors, got {type(cuda).__name__}')
        cuda_states = [
            _byte_tensor(s, f'{where}.cuda[{i}]', s.numel() if isinstance(s, torch.Tensor) else 0)
            for i, s in enumerate(cuda)
        ]
    return dict(torch=torch_state, numpy=numpy_tuple, random=random_tuple, cuda=cuda_states)


def restore_rng_state(state: Any, where: str = 'rng_state') -> None:
    """Set this process's generators to a state from :func:`capture_rng_state`.

    Every field is checked before any generator is set. CUDA states are restored when CUDA is
    available and the device count matches (else a warning says they are not).

    Args:
        state: The saved state.
        where: Name of ``state`` in the messages. Defaults to 'rng_state'.

    Raises:
        RNGStateError: As :func:`check_rng_state`.
    """
    checked = check_rng_state(state, where)
    torch.set_rng_state(checked['torch'])
    np.random.set_state(checked['numpy'])
    random.setstate(checked['random'])
    _restore_cuda(checked['cuda'], where)


def _restore_cuda(cuda_states: List[torch.Tensor], where: str) -> None:
    if cuda_states is None or not torch.cuda.is_available():
        return
    if len(cuda_states) != torch.cuda.device_count():
        print_log(
            f'{where}.cuda holds {len(cuda_states)} device states but this process sees '
            f'{torch.cuda.device_count()} devices: CUDA random states are not restored.',
            logger='current',
            level=logging.WARNING,
        )
        return
    torch.cuda.set_rng_state_all(cuda_states)
