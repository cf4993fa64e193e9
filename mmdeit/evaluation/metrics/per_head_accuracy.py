"""Top-1 of each DeiT head, of their fusion, of the teacher, and how often they agree."""

from typing import Dict, List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric

from mmdeit.registry import METRICS

#: Fields of a prediction read by :class:`PerHeadAccuracy`, and the key each one reports.
_HEAD_FIELDS = {
    'pred_label_cls': 'cls_top1',
    'pred_label_dist': 'dist_top1',
    'pred_label_fused': 'fused_top1',
    'teacher_pred_label': 'teacher_top1',
}


def _label(value) -> int:
    """One predicted or true label, a 1-element tensor or an int, as an int."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f'expected one label per sample, got a tensor of shape {value.shape}')
        return int(value.item())
    return int(value)


def head_labels(sample: dict) -> Optional[dict]:
    """The true label and each head's predicted label of one prediction, as ints.

    Returns:
        ``{'gt_label', 'pred_label', 'pred_label_cls', ...}`` (the fields present), or None if
        the prediction has no per-head labels (its head is not a ``DeiTClsHead``).
    """
    if 'pred_label_cls' not in sample:
        return None
    labels = {'gt_label': _label(sample['gt_label']), 'pred_label': None}
    if 'pred_label' in sample:
        labels['pred_label'] = _label(sample['pred_label'])
    for field in _HEAD_FIELDS:
        if field in sample:
            labels[field] = _label(sample[field])
    return labels


def per_head_metrics(results: List[dict]) -> Dict[str, float]:
    """Top-1 of each head present, and the agreements with the teacher, in percent.

    Args:
        results: :func:`head_labels` of every sample.

    Returns:
        The keys of :class:`PerHeadAccuracy` (without its prefix); empty for no results.
    """
    if not results:
        return {}
    metrics = {}
    fused_present = all('pred_label_fused' in r for r in results)
    for field, key in _HEAD_FIELDS.items():
        if not all(field in r for r in results):
            continue
        if not fused_present and field in ('pred_label_dist', 'teacher_pred_label'):
            continue  # the dist head and the teacher predict the teacher's classes
        correct = sum(r[field] == r['gt_label'] for r in results)
        metrics[key] = 100.0 * correct / len(results)
    if all('teacher_pred_label' in r for r in results):
        if fused_present and all(r['pred_label'] is not None for r in results):
            same = sum(r['pred_label'] == r['teacher_pred_label'] for r in results)
            metrics['teacher_agreement'] = 100.0 * same / len(results)
        same = sum(r['pred_label_dist'] == r['teacher_pred_label'] for r in results)
        metrics['dist_teacher_agreement'] = 100.0 * same / len(results)
    return metrics


@METRICS.register_module()
class PerHeadAccuracy(BaseMetric):
    """The paper's per-head top-1 of a DeiT model, and the teacher's, on the same images.

    DeiT reports three accuracies of one distilled model: the class-token head, the
    distillation-token head, and their fusion (the model's output); mmpretrain, timm and HF
    report one. With :class:`~mmdeit.models.heads.DeiTClsHead` (which labels every prediction
    with ``pred_label_cls``, ``pred_label_dist`` and ``pred_label_fused``) and, in training,
    :class:`~mmdeit.models.classifiers.DistilledImageClassifier` (which adds the teacher's
    ``teacher_pred_label`` during validation), this metric reports, in percent:

    - ``cls_top1``, ``dist_top1``, ``fused_top1``: top-1 of each head and of the fusion;
    - ``teacher_top1``: the teacher's own top-1 (when the model ran its teacher);
    - ``teacher_agreement``: how often the model's output (``pred_label``, by the head's
      ``inference_mode``) is the teacher's prediction, and ``dist_teacher_agreement``: how often
      the distillation head's is, which is what hard distillation trains it to do.

    A key is left out when its field is absent (no teacher in ``tools/test.py``, which builds
    the student alone; no fused label when the teacher has other classes, in which case
    ``dist_top1`` and ``teacher_top1`` are left out too, as they count other classes). Use it
    next to ``Accuracy``: ``val_evaluator = [dict(type='Accuracy', topk=(1, 5)),
    dict(type='PerHeadAccuracy')]``; the keys are logged as ``per_head/cls_top1`` etc.

    Args (mmengine's ``BaseMetric``'s):
        collect_device: Device to gather results on in distributed runs, 'cpu' or 'gpu'.
            Defaults to 'cpu'.
        prefix: Prefix of the keys. Defaults to None, i.e. ``default_prefix`` 'per_head'.

    Raises:
        KeyError: (in :meth:`process`) a prediction has no ``pred_label_cls``, i.e. the
            model's head is not a ``DeiTClsHead``.
    """

    default_prefix = 'per_head'

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep the true label and every head's predicted label of each sample."""
        for sample in data_samples:
            labels = head_labels(sample)
            if labels is None:
                raise KeyError(
                    'PerHeadAccuracy needs the per-head labels of a DeiTClsHead '
                    '(pred_label_cls, ...); the prediction has only '
                    f'{sorted(k for k in sample if k.startswith("pred"))}: use it with a model '
                    'whose head is mmdeit.DeiTClsHead'
                )
            self.results.append(labels)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Top-1 of each head present, and the agreements with the teacher, in percent."""
        return per_head_metrics(results)
