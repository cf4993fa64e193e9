"""Stochastic depth that skips the dropped samples instead of multiplying them by zero.

Skipping needs the indices of the kept samples (``nonzero``), which a CUDA (or any
asynchronous) device has to hand to the host: a wait for the device in every layer. So the
skipping form runs where that is free, on the CPU, and everywhere else (and while
``torch.compile`` traces, where a data-dependent batch size would break the graph) the
mask-multiply form runs: the same random draw, the same sums, every sample computed
(:func:`skips_dropped_samples` says which, from the input's device; the fast encoder layer
asks it).
"""

from typing import Callable, Optional

import torch

from .drop_add import drop_add

#: Device types on which the kept samples are found with ``nonzero`` (no device sync there).
SKIP_DEVICE_TYPES = frozenset({'cpu'})


def drop_path_mask(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Per-sample keep mask (B,) of 0/1, drawn as mmcv's ``drop_path`` draws it."""
    keep = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, 1)
    return (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_().view(-1)


def _masked_sum(
    identity: torch.Tensor, branch_out: torch.Tensor, mask: torch.Tensor, keep: float
) -> torch.Tensor:
    """``identity + branch_out * mask / keep`` with the (B,) mask broadcast per sample.

    ``branch_out`` and ``mask`` are cast to ``identity``'s dtype first (no-ops when they match).
    """
    scale = (mask / keep).to(identity.dtype).view(-1, *(1,) * (identity.dim() - 1))  # (B, 1, 1)
    return torch.addcmul(identity, branch_out.to(identity.dtype), scale)


def multiply_dropped(
    identity: torch.Tensor, x: torch.Tensor, branch: Callable, drop_prob: float
) -> torch.Tensor:
    """mmcv's way: compute ``branch`` for every sample and multiply the dropped ones by 0.

    Same arguments and result as :func:`skip_dropped_samples`, without its device sync: the
    form that runs on CUDA, and the reference the skipping form is tested
    against (the reference layers, ``fast_path=False``, use mmcv's ``DropPath``).
    """
    return _masked_sum(identity, branch(x), drop_path_mask(x, drop_prob), 1 - drop_prob)


def skip_dropped_samples(
    identity: torch.Tensor,
    x: torch.Tensor,
    branch: Callable,
    drop_prob: float,
    kept_branch: Optional[Callable] = None,
) -> torch.Tensor:
    """``identity + drop_path(branch(x))``, computing ``branch`` only for the kept samples.

    Equal to mmcv's ``DropPath`` applied to the whole batch with the same random draw (a
    dropped sample's branch is multiplied by 0 there, and the branch of one sample does not
    depend on the others), but the dropped rows never enter the GEMMs. Finding the kept
    samples (``nonzero``) waits for the device on CUDA.

    The result has ``identity``'s dtype: under autocast the branch returns a lower precision
    (e.g. bf16 from its linear layers) while the residual stream stays fp32, so the branch
    output is cast to the stream's dtype before it is added, in every case (as DINOv2's
    ``drop_add_residual_stochastic_depth`` does). Without autocast the cast is a no-op.

    Args:
        identity: The shortcut (B, n, C).
        x: The branch input (B, N, C).
        branch: Maps a batch of inputs (b, N, C) to its residual branch (b, n, C), without
            stochastic depth.
        drop_prob: The drop probability, > 0.
        kept_branch: Maps ``x`` and the kept samples' indices (b,) to ``branch(x[kept])``,
            reading them where they are (the fast layer's pre-norm kernel); None for
            ``branch(x.index_select(0, kept))``. Defaults to None.
    """
    keep = 1 - drop_prob
    mask = drop_path_mask(x, drop_prob)  # (B,)
    kept = mask.nonzero().view(-1)  # (b,)
    num_kept = kept.numel()
    if num_kept == x.shape[0]:
        return drop_add(identity, branch(x), None, 1 / keep)  # (B, n, C)
    if num_kept == 0:  # keep every parameter in the graph (DDP), as mmcv does
        return _masked_sum(identity, branch(x), mask, keep)
    out = branch(x.index_select(0, kept)) if kept_branch is None else kept_branch(x, kept)
    return drop_add(identity, out, kept, 1 / keep)  # one pass under bf16 autocast (drop_add.py)


def skips_dropped_samples(x: torch.Tensor) -> bool:
    """Whether to skip the dropped samples (:func:`skip_dropped_samples`) for this input, or
    else to multiply them by 0 (:func:`multiply_dropped`).

    True on the devices of :data:`SKIP_DEVICE_TYPES` (the CPU), unless ``torch.compile`` is
    tracing; False elsewhere (CUDA: no host sync per layer).
    """
    return x.device.type in SKIP_DEVICE_TYPES and not torch.compiler.is_compiling()
