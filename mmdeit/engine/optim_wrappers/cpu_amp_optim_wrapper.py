"""Mixed precision on a CPU: bf16 autocast without loss scaling (what ``--amp`` uses there)."""

from typing import Optional, Union

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmdeit.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` for CPU-only runs: bf16 autocast, no loss scaling.

    mmengine 0.10's ``AmpOptimWrapper`` refuses to be built without a GPU (NPU, MLU, MUSA),
    and its ``torch.cuda.amp.GradScaler`` would be disabled there anyway. This one runs the
    forward pass and the loss under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (through
    ``AmpOptimWrapper.optim_context``) with a disabled grad scaler: ``backward`` and ``step``
    are those of a plain ``OptimWrapper`` and the checkpointed ``loss_scaler`` state is empty
    (a GPU checkpoint's scaler state is ignored on resume). bf16 has the exponent range of
    fp32, so its gradients do not underflow and need no scaling.

    Args:
        loss_scale: Ignored (bf16 is not scaled); a value other than None or 'dynamic' is
            logged as ignored. Defaults to None.
        dtype: The autocast dtype; the CPU only supports 'bfloat16'. Defaults to 'bfloat16'.
        **kwargs: Arguments of ``OptimWrapper`` (``optimizer``, ``clip_grad``,
            ``accumulative_counts``).
    """

    def __init__(
        self,
        loss_scale: Optional[Union[str, float, dict]] = None,
        dtype: Union[str, torch.dtype] = 'bfloat16',
        **kwargs,
    ):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(f'CPU autocast only supports dtype bfloat16, got {dtype!r}')
        OptimWrapper.__init__(self, **kwargs)  # skips AmpOptimWrapper's GPU assert
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)  # a pass-through
        self.cast_dtype = torch.bfloat16
        ignored = '' if loss_scale in (None, 'dynamic') else f' (loss_scale={loss_scale!r} ignored)'
        print_log(
            f'CPUAmpOptimWrapper: bf16 autocast on the CPU, no loss scaling{ignored}',
            logger='current',
        )
