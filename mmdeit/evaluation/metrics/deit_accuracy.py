"""mmpretrain's top-k ``Accuracy`` that also reports each DeiT head: one evaluator entry."""

from typing import Dict, List, Optional, Sequence, Union

from mmengine.evaluator import BaseMetric
from mmpretrain.evaluation import Accuracy

from mmdeit.registry import METRICS

from .per_head_accuracy import PerHeadAccuracy, head_labels, per_head_metrics

#: Where a result keeps its per-head labels, and the prefix of their keys.
_PER_HEAD = PerHeadAccuracy.default_prefix


def topk_error(topk: Sequence[int], num_classes: int, field: str) -> Optional[str]:
    """The message for a top-k that cannot be computed with ``num_classes``, or None.

    Args:
        topk: The metric's ``topk``.
        num_classes: How many classes the model predicts (or the data set has).
        field: The config field to name, such as ``'val_evaluator'``.
    """
    too_large = [k for k in topk if k > num_classes]
    if not too_large:
        return None
    fine = tuple(k for k in topk if k <= num_classes) or (1,)
    return (
        f'{field}: Accuracy topk={tuple(topk)} asks for top-{max(too_large)} of only '
        f'{num_classes} classes. Set it in your config, for example '
        f'`{field} = dict(type="Accuracy", topk={fine})` (and `test_evaluator = val_evaluator` '
        'when the two should match)'
    )


@METRICS.register_module(name=['Accuracy', 'DeiTAccuracy'])
class DeiTAccuracy(Accuracy):
    """mmpretrain's ``Accuracy`` (top-k, ``accuracy/top1`` ...) plus the per-head keys.

    In mmdeit's configs (``default_scope='mmdeit'``) ``type='Accuracy'`` builds this class, so
    the mmpretrain idiom ``val_evaluator = dict(type='Accuracy', topk=(1,))`` in a child config
    overrides the recipe's ``dict(type='Accuracy', topk=(1, 5))`` key by key and keeps the
    per-head keys. With a ``DeiTClsHead`` it also reports :class:`PerHeadAccuracy`'s keys
    (``per_head/cls_top1``, ``per_head/dist_top1``, ``per_head/fused_top1`` and, during
    training, ``per_head/teacher_top1`` and the agreements); with any other head it is
    mmpretrain's ``Accuracy``. ``type='mmpretrain.Accuracy'`` or ``per_head=False`` leaves the
    per-head keys out.

    Args:
        topk: The k of each top-k accuracy. Defaults to (1,).
        thrs: Score thresholds, as mmpretrain's. Defaults to 0.
        per_head: Report the per-head keys (when the head gives them). Defaults to True.
        collect_device: 'cpu' or 'gpu', to gather results in distributed runs. Defaults to
            'cpu'.
        prefix: Prefix of the top-k keys. Defaults to None, i.e. 'accuracy'. The per-head keys
            keep theirs, 'per_head'.

    Raises:
        ValueError: when the evaluator is given a data set (before training or testing starts)
            whose ``classes`` are fewer than the largest ``topk``.
    """

    def __init__(
        self,
        topk: Union[int, Sequence[int]] = (1,),
        thrs: Union[float, Sequence[Optional[float]], None] = 0.0,
        per_head: bool = True,
        collect_device: str = 'cpu',
        prefix: Optional[str] = None,
    ) -> None:
        super().__init__(topk=topk, thrs=thrs, collect_device=collect_device, prefix=prefix)
        self.per_head = per_head

    @property
    def dataset_meta(self) -> Optional[dict]:
        """The data set's meta information (``classes`` ...)."""
        return self._dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, dataset_meta: dict) -> None:
        classes = (dataset_meta or {}).get('classes')
        if classes:
            message = topk_error(self.topk, len(classes), 'val_evaluator / test_evaluator')
            if message is not None:
                raise ValueError(message)
        BaseMetric.dataset_meta.fset(self, dataset_meta)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """mmpretrain's results, each with the sample's per-head labels (if it has them)."""
        super().process(data_batch, data_samples)
        if not self.per_head:
            return
        for result, sample in zip(self.results[-len(data_samples) :], data_samples):
            labels = head_labels(sample)
            if labels is not None:
                result[_PER_HEAD] = labels

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """The top-k accuracies and, when every sample has them, the per-head ones."""
        metrics = super().compute_metrics(results)
        if self.per_head and results and all(_PER_HEAD in r for r in results):
            heads = per_head_metrics([r[_PER_HEAD] for r in results])
            metrics.update({f'{_PER_HEAD}/{key}': value for key, value in heads.items()})
        return metrics

    def evaluate(self, size: int) -> dict:
        """Prefix the top-k keys with ``accuracy/`` and the per-head ones with ``per_head/``."""
        metrics = super().evaluate(size)
        nested = f'{self.prefix}/{_PER_HEAD}/'
        return {
            key[len(self.prefix) + 1 :] if key.startswith(nested) else key: value
            for key, value in metrics.items()
        }
