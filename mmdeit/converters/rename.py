"""The one key-renaming helper every conversion direction goes through.

A conversion is a table of ``(foreign name, mmdeit name)`` pairs, read left to right for
foreign -> mmdeit and right to left (``reverse=True``) for the way back:

* a name ending in '.' renames a prefix (whole dotted components), any other only that key;
* ``{}`` stands for a layer index and is carried over, e.g.
  ``('blocks.{}.norm1.', 'backbone.layers.{}.ln1.')``.

The first matching entry wins. Keys that no entry matches make the conversion fail with the
list of them, so that a checkpoint is never silently half converted.
"""

import functools
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

StateDict = Dict[str, torch.Tensor]
KeyTable = Sequence[Tuple[str, str]]


@functools.cache
def _pattern(name: str) -> re.Pattern:
    """A regex for a table name: ``{}`` captures a layer index, a trailing '.' any rest."""
    body = r'(\d+)'.join(re.escape(part) for part in name.split('{}'))
    return re.compile(body + (r'(.*)' if name.endswith('.') else ''))


def rename_key(key: str, table: KeyTable, reverse: bool = False) -> Optional[str]:
    """Rename ``key`` by the first matching entry of ``table``.

    Args:
        key: A state-dict key.
        table: (source, target) name pairs, see the module docstring.
        reverse: Map target -> source instead. Defaults to False.

    Returns:
        The new key, or None when no entry matches.
    """
    for src, dst in table:
        if reverse:
            src, dst = dst, src
        match = _pattern(src).fullmatch(key)
        if match is None:
            continue
        groups = match.groups()
        if src.endswith('.'):  # the last group is the rest of the key after the prefix
            return dst.format(*groups[:-1]) + groups[-1]
        return dst.format(*groups)
    return None


def rename_keys(
    state_dict: Mapping[str, torch.Tensor],
    table: KeyTable,
    what: str,
    reverse: bool = False,
    drop: Iterable[str] = (),
) -> StateDict:
    """Rename every key of ``state_dict`` by ``table``; the tensors are not touched.

    Args:
        state_dict: The state dict to convert.
        table: (source, target) name pairs, see the module docstring.
        what: The source layout, for the error message, e.g. 'timm'.
        reverse: Map target -> source names instead. Defaults to False.
        drop: Key prefixes to leave out (keys with no counterpart that may be lost).
            Defaults to ().

    Returns:
        The renamed state dict, in the input's order.

    Raises:
        ValueError: Some keys match no entry; the message names them.
    """
    drop = tuple(drop)
    out, unknown = {}, []
    for key, value in state_dict.items():
        if drop and key.startswith(drop):
            continue
        new = rename_key(key, table, reverse)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise unknown_keys_error(unknown, what)
    return out


def unknown_keys_error(keys: List[str], what: str) -> ValueError:
    """A ValueError naming how many keys of a ``what`` state dict are unmapped, with samples."""
    sample = ', '.join(sorted(keys)[:8])
    return ValueError(
        f'{len(keys)} keys of the {what} state dict have no known counterpart, e.g. {sample}'
    )
