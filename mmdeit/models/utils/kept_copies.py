"""Copies of parameters kept for inference kernels: bf16 casts, weights in a kernel's layout.

A copy is kept while its parameter lives, in a dict weakly keyed by it (not in any
``state_dict``), and made again when the parameter's storage, version or the copy's ``tag``
change: an optimizer step and ``load_state_dict`` bump the version, ``.to()`` gives new
storage. A change through ``.data`` keeps both, so :func:`clear` drops a module's copies (the
fast encoder layer calls it on ``train()`` / ``eval()``). Used by ``onednn_linear.py`` and
``amx_linear.py``.
"""

from typing import Callable, List, Tuple

import torch
import torch.nn as nn
from torch.utils.weak import WeakTensorKeyDictionary

_STORES: List[WeakTensorKeyDictionary] = []


def new_store() -> WeakTensorKeyDictionary:
    """A dict of copies ``{param: (key, copy)}`` that :func:`clear` empties of a module's."""
    store = WeakTensorKeyDictionary()
    _STORES.append(store)
    return store


def kept(
    store: WeakTensorKeyDictionary,
    t: torch.Tensor,
    tag: object,
    make: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``make(t)``, kept in ``store`` by the tensor ``t`` while it lives and made again when its
    storage, version or ``tag`` (the wanted dtype, with anything else ``make`` depends on)
    change. Made at every call for an inference tensor (a model built under
    ``torch.inference_mode``): it has no version to tell a change by."""
    if t.is_inference():
        return make(t)
    key = (t.data_ptr(), t._version, tag)
    cached = store.get(t)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, make(t))
        store[t] = cached
    return cached[1]


def clear(module: nn.Module) -> None:
    """Drop the copies every store keeps of ``module``'s parameters."""
    for p in module.parameters():
        for store in _STORES:
            store.pop(p, None)


def scale_rows(t: torch.Tensor, dtype: torch.dtype, rows: Tuple[int, float]) -> torch.Tensor:
    """A copy of ``t`` in ``dtype`` whose first ``n`` rows (entries of a bias) are multiplied by
    ``s`` in that dtype, for ``rows = (n, s)``."""
    n, s = rows
    out = t.detach().to(dtype, copy=True)
    out[:n].mul_(s)
    return out
