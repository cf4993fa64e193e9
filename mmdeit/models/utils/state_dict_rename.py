"""Prefix renaming of state-dict keys, shared by the checkpoint converters."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch

StateDict = Dict[str, torch.Tensor]


def swap_prefix(key: str, table: Sequence[Tuple[str, str]], reverse: bool = False) -> Optional[str]:
    """Rename ``key`` by the first matching entry of ``table``.

    Args:
        key: A state-dict key.
        table: (source, target) pairs. An entry ending in '.' renames a prefix (whole dotted
            components), any other entry only the exact key.
        reverse: Map target -> source instead. Defaults to False.

    Returns:
        The new key, or None when no entry matches.
    """
    for src, dst in table:
        if reverse:
            src, dst = dst, src
        if src.endswith('.') and key.startswith(src):
            return dst + key[len(src) :]
        if key == src:
            return dst
    return None


def unknown_keys_error(keys: List[str], what: str) -> ValueError:
    """A ValueError naming how many keys of a ``what`` state dict are unmapped, with samples."""
    sample = ', '.join(sorted(keys)[:8])
    return ValueError(
        f'{len(keys)} keys of the {what} state dict have no known counterpart, e.g. {sample}'
    )
