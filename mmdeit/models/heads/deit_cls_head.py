"""Two-token DeiT classification head that can be trained with a teacher."""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmpretrain.evaluation.metrics import Accuracy
from mmpretrain.models.heads import VisionTransformerClsHead
from mmpretrain.structures import DataSample

from mmdeit.registry import MODELS

from ..losses import DistillationLoss

#: Default ``init_cfg`` of :class:`DeiTClsHead` (official DeiT: trunc_normal(std=.02), bias 0).
OFFICIAL_HEAD_INIT = dict(type='TruncNormal', layer='Linear', std=0.02)


_EXPECTED_TOKENS = (
    'DeiTClsHead expects the last backbone output to be a pair (cls_token, dist_token) of '
    "tensors (DistilledVisionTransformer with out_type='cls_token') or the legacy triple "
    '(patch_token, cls_token, dist_token)'
)


def _split_tokens(last: object) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(cls_token, dist_token)`` of a backbone's last output, a pair or a legacy triple."""
    if not isinstance(last, (tuple, list)):
        raise TypeError(f'{_EXPECTED_TOKENS}; got a {type(last).__name__}')
    if len(last) not in (2, 3):
        raise TypeError(f'{_EXPECTED_TOKENS}; got a {type(last).__name__} of length {len(last)}')
    bad = [type(item).__name__ for item in last if not isinstance(item, torch.Tensor)]
    if bad:
        raise TypeError(f'{_EXPECTED_TOKENS}; got a {type(last).__name__} holding {", ".join(bad)}')
    return last[-2], last[-1]


@MODELS.register_module()
class DeiTClsHead(VisionTransformerClsHead):
    """DeiT head: one linear classifier on the class token, one on the distillation token.

    The state_dict keys are mmpretrain's ``DeiTClsHead``'s (``layers.head.*`` and
    ``layers.head_dist.*``, plus ``layers.pre_logits.*`` with ``hidden_dim``), so its checkpoints
    load strictly. Unlike mmpretrain's head this one trains: :meth:`loss` computes the logits of
    both tokens and passes them, the labels and the teacher's logits to a
    :class:`~mmdeit.models.losses.DistillationLoss`. Like mmpretrain's head it takes the tokens
    as a pair ``(cls_token, dist_token)`` or as the legacy triple
    ``(patch_token, cls_token, dist_token)`` (see :meth:`pre_logits`).

    Prediction (:meth:`forward`, :meth:`predict`) returns, by ``inference_mode``:

    - 'fusion': ``(head(cls) + head_dist(dist)) / 2``, the paper's and mmpretrain's output;
    - 'cls': ``head(cls)`` only;
    - 'dist': ``head_dist(dist)`` only.

    A teacher whose classes differ from the student's (e.g. trained on another label set) is
    distilled into ``head_dist`` sized to ``teacher_num_classes``; the class-token head keeps
    ``num_classes`` and is the only one that predicts the student's classes, so such a head
    predicts with ``inference_mode='cls'`` ('fusion' and 'dist' are refused when it is built).

    Args:
        num_classes: Number of classes.
        in_channels: Channels of the tokens (the backbone's ``embed_dims``).
        hidden_dim: Width of an extra hidden layer (shared by both tokens) before the
            classifiers; None for none. Defaults to None.
        act_cfg: Activation of the hidden layer. Defaults to None, i.e. ``dict(type='Tanh')``.
        inference_mode: 'fusion', 'cls' or 'dist', see above. Defaults to 'fusion'.
        teacher_num_classes: Number of classes of the teacher, i.e. outputs of ``head_dist``
            (a positive int). Defaults to None: ``num_classes``. When it differs from
            ``num_classes``, ``inference_mode`` must be 'cls'.
        loss: Config (or instance) of a :class:`DistillationLoss`, built in the ``mmdeit`` scope.
            Defaults to None, i.e. ``dict(type='DistillationLoss', mode='none')`` (no
            teacher).
        topk: Top-k accuracy reported when ``cal_acc``. Defaults to ``(1, )``.
        cal_acc: Report the training accuracy of the prediction logits (hard labels only).
            Defaults to False.
        init_cfg: Initialization config. Defaults to ``OFFICIAL_HEAD_INIT``, a truncated
            normal (std 0.02) on the linear layers, as the official DeiT code initializes
            ``head`` and ``head_dist``.
    """

    INFERENCE_MODES = ('fusion', 'cls', 'dist')

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        hidden_dim: Optional[int] = None,
        act_cfg: Optional[dict] = None,
        inference_mode: str = 'fusion',
        teacher_num_classes: Optional[int] = None,
        loss: Optional[dict | nn.Module] = None,
        topk: int | Tuple[int, ...] = (1,),
        cal_acc: bool = False,
        init_cfg: Optional[dict] = OFFICIAL_HEAD_INIT,
    ):
        act_cfg = dict(type='Tanh') if act_cfg is None else act_cfg
        loss = dict(type='DistillationLoss', mode='none') if loss is None else loss
        if inference_mode not in self.INFERENCE_MODES:
            raise ValueError(
                f'inference_mode must be one of {self.INFERENCE_MODES}, got {inference_mode!r}'
            )
        if teacher_num_classes is None:
            teacher_num_classes = num_classes
        elif isinstance(teacher_num_classes, bool) or not isinstance(teacher_num_classes, int):
            raise TypeError(
                'teacher_num_classes must be a positive int or None, got '
                f'{type(teacher_num_classes).__name__} {teacher_num_classes!r}'
            )
        elif teacher_num_classes <= 0:
            raise ValueError(
                f'teacher_num_classes must be a positive int or None, got {teacher_num_classes}'
            )
        if teacher_num_classes != num_classes and inference_mode != 'cls':
            raise ValueError(
                f'inference_mode {inference_mode!r} uses head_dist, which predicts the '
                f"teacher's teacher_num_classes={teacher_num_classes} classes, not the "
                f"student's num_classes={num_classes}; use inference_mode='cls'"
            )
        # Read by ``_init_layers``, which the parent's ``__init__`` calls.
        self.teacher_num_classes = teacher_num_classes
        if isinstance(loss, dict):
            # in mmdeit's scope whatever the default scope is (an mmdet/mmseg/mmpretrain run)
            loss = MODELS.build({'_scope_': 'mmdeit', **loss})
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                'loss of DeiTClsHead must be a DistillationLoss (config), got '
                f'{type(loss).__name__}; put the base criterion into its base_loss'
            )
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            hidden_dim=hidden_dim,
            act_cfg=act_cfg,
            init_cfg=init_cfg,
            loss=loss,
            topk=topk,
            cal_acc=cal_acc,
        )
        self.inference_mode = inference_mode
        self._warned_untrained_dist = False

    def _init_layers(self):
        """Build ``layers`` of the parent, then add ``layers.head_dist``."""
        super()._init_layers()
        width = self.in_channels if self.hidden_dim is None else self.hidden_dim
        self.layers.add_module('head_dist', nn.Linear(width, self.teacher_num_classes))

    def pre_logits(self, feats: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        """The (cls, dist) tokens, each (B, C'), of the last output, after the hidden layer.

        Args:
            feats: The backbone outputs; the last one is a pair ``(cls_token, dist_token)`` of
                (B, C) tensors (``DistilledVisionTransformer`` with ``out_type='cls_token'``)
                or, as mmpretrain's head also accepts, the legacy triple
                ``(patch_token, cls_token, dist_token)`` whose patch token is ignored.

        Raises:
            TypeError: The last output is not such a pair or triple of tensors.
        """
        cls_token, dist_token = _split_tokens(feats[-1])
        if self.hidden_dim is not None:
            cls_token = self.layers.act(self.layers.pre_logits(cls_token))
            dist_token = self.layers.act(self.layers.pre_logits(dist_token))
        return cls_token, dist_token

    def forward_logits(self, feats: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits of both heads: ``(cls_score, dist_score)``.

        Returns:
            ``cls_score`` (B, num_classes) and ``dist_score`` (B, teacher_num_classes).
        """
        cls_token, dist_token = self.pre_logits(feats)
        return self.layers.head(cls_token), self.layers.head_dist(dist_token)

    def forward(self, feats: Sequence) -> torch.Tensor:
        """Prediction logits (B, num_classes) according to ``inference_mode``."""
        return self._fuse(*self.forward_logits(feats))

    def predict(
        self, feats: Sequence, data_samples: Optional[List[Optional[DataSample]]] = None
    ) -> List[DataSample]:
        """Predictions by ``inference_mode``, and every head's own predicted label.

        Besides ``pred_score``/``pred_label`` (as mmpretrain's head: the ``inference_mode``
        output), each sample gets ``pred_label_cls`` (class-token head) and, when both heads
        predict the student's classes, ``pred_label_dist`` (distillation head) and
        ``pred_label_fused`` (their mean): the per-head accuracies of the paper, read by
        :class:`~mmdeit.evaluation.PerHeadAccuracy`. With a teacher of other classes
        (``teacher_num_classes``), ``pred_label_dist`` is the teacher class the dist head picks
        (for the agreement with the teacher) and there is no fused label.

        Args:
            feats: The backbone outputs, see :meth:`pre_logits`.
            data_samples: The samples to fill in, or None for new ones. Defaults to None.

        Returns:
            The data samples with the predictions.
        """
        cls_score, dist_score = self.forward_logits(feats)
        predictions = self._get_predictions(self._fuse(cls_score, dist_score), data_samples)
        labels = dict(cls=cls_score.argmax(dim=1), dist=dist_score.argmax(dim=1))  # (B, ) each
        if self.teacher_num_classes == self.num_classes:
            labels['fused'] = (cls_score + dist_score).argmax(dim=1)
        for i, sample in enumerate(predictions):
            for head, label in labels.items():
                sample.set_field(label[i : i + 1].detach(), f'pred_label_{head}')
        return predictions

    def loss(
        self,
        feats: Sequence,
        data_samples: List[DataSample],
        teacher_logits: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        """Training losses ``loss_cls`` and ``loss_distill`` (see :class:`DistillationLoss`).

        Args:
            feats: The backbone outputs, see :meth:`pre_logits`.
            data_samples: Samples with ``gt_label`` or, after Mixup/CutMix, ``gt_score``.
            teacher_logits: The teacher's logits (B, teacher_num_classes) on the same batch;
                required unless the loss mode is 'none'. Defaults to None.
            **kwargs: Unused, accepted for interface compatibility with ``ClsHead.loss``.

        Returns:
            dict[str, Tensor]: the loss terms (and ``accuracy_top-k`` with ``cal_acc``).
        """
        cls_score, dist_score = self.forward_logits(feats)
        if 'gt_score' in data_samples[0]:
            # Batch augments (Mixup/CutMix) turn the labels into soft scores.
            target = torch.stack([s.gt_score for s in data_samples])  # (B, num_classes)
        else:
            target = torch.cat([s.gt_label for s in data_samples])  # (B, )
        if (
            self.loss_module.mode == 'none'
            and self.inference_mode != 'cls'
            and not self._warned_untrained_dist
        ):
            MMLogger.get_current_instance().warning(
                "DistillationLoss mode 'none' trains only the class-token head; "
                f'inference_mode {self.inference_mode!r} uses the untrained head_dist. '
                "Consider inference_mode='cls'."
            )
            self._warned_untrained_dist = True
        losses = dict(self.loss_module(cls_score, dist_score, target, teacher_logits))
        if self.cal_acc:
            if target.ndim != 1:
                raise ValueError(
                    'cal_acc needs hard labels; it is meaningless with batch '
                    'augments such as Mixup/CutMix'
                )
            with torch.no_grad():
                pred = self._fuse(cls_score, dist_score)
            topk = (self.topk,) if isinstance(self.topk, int) else tuple(self.topk)
            # One entry per k, each a list over the (single, default) score threshold.
            acc = Accuracy.calculate(pred, target, topk=topk)
            losses.update({f'accuracy_top-{k}': a[0] for k, a in zip(topk, acc)})
        return losses

    def _fuse(self, cls_score: torch.Tensor, dist_score: torch.Tensor) -> torch.Tensor:
        """Combine the two logits as :meth:`forward` does."""
        if self.inference_mode == 'cls':
            return cls_score
        if self.inference_mode == 'dist':
            return dist_score
        return (cls_score + dist_score) / 2
