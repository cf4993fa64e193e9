"""The DeiT distillation loss: a base criterion on the class token plus a teacher term."""

from numbers import Real
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdeit.registry import MODELS


def _check_real(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    """Return ``value`` as a float after checking it is a real number in the range."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f'{name} must be a real number, got {type(value).__name__} {value!r}')
    value = float(value)
    if (value <= low if low_open else value < low) or value > high:
        bound = f'({low}, {high}]' if low_open else f'[{low}, {high}]'
        raise ValueError(f'{name} must be in {bound}, got {value!r}')
    return value


@MODELS.register_module()
class DistillationLoss(nn.Module):
    """Loss of the DeiT paper's distilled training (the official ``DistillationLoss``).

    With ``cls_score``/``dist_score`` the logits of the class and distillation tokens, ``target``
    the labels and ``teacher_score`` the teacher's logits on the same input batch:

    - ``base = base_loss(cls_score, target)``;
    - mode 'none': no teacher term; the total loss is ``base``;
    - mode 'hard': ``distill = CE(dist_score, argmax(teacher_score))``;
    - mode 'soft': ``distill = KL(log_softmax(dist/tau) || log_softmax(teacher/tau))`` summed over
      the batch and classes, times ``tau**2``, divided by ``dist_score.numel()`` (B * num_classes,
      ``soft_reduction='numel'``, the official code) or by B (``soft_reduction='batchmean'``,
      PyTorch's ``kl_div(reduction='batchmean')``, the mean per-sample KL);
    - total ``= base * (1 - alpha) + distill * alpha``.

    :meth:`forward` returns the two weighted terms as ``loss_cls`` (``base * (1 - alpha)``) and
    ``loss_distill`` (``distill * alpha``), so the Runner logs them separately and their sum is the
    official total. In mode 'none' ``loss_cls`` is ``base`` (``alpha`` is not applied, as in the
    official code) and ``loss_distill`` is an exact zero that is still connected to
    ``dist_score``: the log keeps the same keys and the distillation head takes part in the graph
    (with a zero gradient), so DDP works without ``find_unused_parameters``.

    ``target`` is either hard labels (B,) or soft labels (B, num_classes), e.g. the ``gt_score``
    produced by mmpretrain's Mixup/CutMix. Soft labels need a base loss that supports them:
    mmpretrain's ``CrossEntropyLoss`` (the soft-target cross entropy of the official code when
    Mixup/CutMix is on) or ``LabelSmoothLoss`` (label smoothing, also of mixed labels). The teacher
    term never uses label smoothing, as in the official code.

    How the two soft reductions relate: with C = num_classes, the 'batchmean' term is exactly C
    times the 'numel' term, for every ``tau`` (``tau**2`` multiplies both), so ``tau`` carries
    over unchanged and ``alpha`` does not. The 'batchmean' loss with
    ``alpha_b = alpha / (alpha + C * (1 - alpha))`` is the 'numel' loss with ``alpha`` times the
    constant ``C / (alpha + C * (1 - alpha))`` (same balance of the two terms, same gradient
    direction; the constant scales the loss, which matters to SGD's learning rate and hardly to
    AdamW); conversely ``alpha = C * alpha_b / (1 - alpha_b + C * alpha_b)``. E.g. the official
    ``alpha=0.5`` with ImageNet's C = 1000 is ``alpha_b ~= 0.001``; 'batchmean' with
    ``alpha=0.5`` weights the teacher term 1000 times more than the paper.

    Args:
        mode: 'none', 'soft' or 'hard'. Defaults to 'none'.
        alpha: Weight of the teacher term in [0, 1]. Defaults to 0.5.
        tau: Temperature of soft distillation, > 0. Defaults to 1.0.
        base_loss: Config (or module) of the base criterion on the class-token logits, called
            as ``base_loss(cls_score, target, avg_factor=B)``. Defaults to None, i.e.
            ``dict(type='CrossEntropyLoss', loss_weight=1.0)``.
        soft_reduction: Normalisation of the summed soft KL: 'numel' (divided by
            B * num_classes, the official DeiT code) or 'batchmean' (divided by B). Only mode
            'soft' reads it; in modes 'hard' and 'none' it is checked and then has no effect.
            Defaults to 'numel'.
    """

    MODES = ('none', 'soft', 'hard')
    SOFT_REDUCTIONS = ('numel', 'batchmean')

    def __init__(
        self,
        mode: str = 'none',
        alpha: float = 0.5,
        tau: float = 1.0,
        base_loss: Optional[dict | nn.Module] = None,
        soft_reduction: str = 'numel',
    ):
        super().__init__()
        if base_loss is None:
            base_loss = dict(type='CrossEntropyLoss', loss_weight=1.0)
        if mode not in self.MODES:
            raise ValueError(f'mode must be one of {self.MODES}, got {mode!r}')
        self.mode = mode
        if not isinstance(soft_reduction, str) or soft_reduction not in self.SOFT_REDUCTIONS:
            raise ValueError(
                f'soft_reduction must be one of {self.SOFT_REDUCTIONS}, got {soft_reduction!r}'
            )
        self.soft_reduction = soft_reduction
        self.alpha = _check_real('alpha', alpha, 0.0, 1.0)
        self.tau = _check_real('tau', tau, 0.0, float('inf'), low_open=True)
        if isinstance(base_loss, dict):
            base_loss = MODELS.build(base_loss)
        if not isinstance(base_loss, nn.Module):
            raise TypeError(
                'base_loss must be a loss config dict or an nn.Module, got '
                f'{type(base_loss).__name__}'
            )
        self.base_loss = base_loss

    @property
    def needs_teacher(self) -> bool:
        """Whether :meth:`forward` needs ``teacher_score`` (modes 'soft' and 'hard')."""
        return self.mode != 'none'

    def distill_term(self, dist_score: torch.Tensor, teacher_score: torch.Tensor) -> torch.Tensor:
        """The unweighted teacher term (0-dim) of mode 'soft' or 'hard'."""
        if self.mode == 'hard':
            return F.cross_entropy(dist_score, teacher_score.argmax(dim=1))
        tau = self.tau
        kl = F.kl_div(
            F.log_softmax(dist_score / tau, dim=1),
            F.log_softmax(teacher_score / tau, dim=1),
            reduction='sum',
            log_target=True,
        )
        # 'numel' (B * num_classes) is the official DeiT normalisation (the legacy PyTorch
        # 'mean' behaviour of kl_div, see facebookresearch/deit issue 61). It scales the soft
        # term down by num_classes relative to 'batchmean' (B); the published alpha/tau were
        # tuned with it, so it is the default, to reproduce the paper's loss exactly.
        if self.soft_reduction == 'numel':
            return kl * (tau * tau) / dist_score.numel()
        return kl * (tau * tau) / dist_score.size(0)

    def forward(
        self,
        cls_score: torch.Tensor,
        dist_score: torch.Tensor,
        target: torch.Tensor,
        teacher_score: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Compute the two loss terms.

        Args:
            cls_score: Class-token logits (B, num_classes).
            dist_score: Distillation-token logits (B, num_classes).
            target: Hard labels (B,) or soft labels (B, num_classes).
            teacher_score: Teacher logits (B, num_classes) on the same input batch; required
                in modes 'soft' and 'hard', ignored in mode 'none'. Defaults to None.

        Returns:
            ``dict(loss_cls=..., loss_distill=...)``, 0-dim tensors whose sum is the total loss.
        """
        base = self.base_loss(cls_score, target, avg_factor=cls_score.size(0))
        if self.mode == 'none':
            return dict(loss_cls=base, loss_distill=dist_score.sum() * 0.0)
        if teacher_score is None:
            raise ValueError(
                f'DistillationLoss mode {self.mode!r} needs teacher_score (the '
                "teacher's logits); use mode='none' to train without a teacher"
            )
        if teacher_score.shape != dist_score.shape:
            raise ValueError(
                f'teacher_score shape {tuple(teacher_score.shape)} does not match '
                f'dist_score shape {tuple(dist_score.shape)} (batch, num_classes)'
            )
        teacher_score = teacher_score.detach()
        distill = self.distill_term(dist_score, teacher_score)
        return dict(loss_cls=base * (1.0 - self.alpha), loss_distill=distill * self.alpha)

    def extra_repr(self) -> str:
        return (
            f'mode={self.mode!r}, alpha={self.alpha}, tau={self.tau}, '
            f'soft_reduction={self.soft_reduction!r}'
        )
