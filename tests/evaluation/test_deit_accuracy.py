"""mmdeit's Accuracy: mmpretrain's top-k and, with a DeiTClsHead, the per-head keys, from one
evaluator entry; a top-k beyond the data set's classes is refused when the data set is set."""

import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmpretrain.evaluation import Accuracy as MMPretrainAccuracy
from mmpretrain.structures import DataSample

from mmdeit.evaluation import DeiTAccuracy, PerHeadAccuracy
from mmdeit.models.heads import DeiTClsHead
from mmdeit.registry import METRICS

NUM_CLASSES = 6


def _predictions(head_type: str = 'DeiTClsHead', n: int = 12) -> list:
    """Real predictions of a DeiT head (or mmpretrain's linear head) on random features."""
    torch.manual_seed(0)
    samples = [DataSample().set_gt_label(i % NUM_CLASSES) for i in range(n)]
    if head_type == 'DeiTClsHead':
        head = DeiTClsHead(num_classes=NUM_CLASSES, in_channels=8)
        feats = ((torch.randn(n, 8), torch.randn(n, 8)),)
    else:
        from mmpretrain.models.heads import LinearClsHead

        head = LinearClsHead(num_classes=NUM_CLASSES, in_channels=8)
        feats = (torch.randn(n, 8),)
    with torch.no_grad():
        return [p.to_dict() for p in head.eval().predict(feats, samples)]


def _evaluate(metrics, predictions) -> dict:
    with DefaultScope.overwrite_default_scope('mmdeit'):
        evaluator = Evaluator(metrics)
    evaluator.process(predictions)
    return evaluator.evaluate(len(predictions))


def test_accuracy_in_the_mmdeit_scope_is_deit_accuracy():
    with DefaultScope.overwrite_default_scope('mmdeit'):
        metric = METRICS.build(dict(type='Accuracy', topk=(1, 5)))
        plain = METRICS.build(dict(type='mmpretrain.Accuracy'))
    assert type(metric) is DeiTAccuracy and metric.topk == (1, 5)
    assert type(plain) is MMPretrainAccuracy


@pytest.mark.parametrize('topk', [(1,), (1, 5)])
def test_one_entry_reports_top_k_and_the_per_head_keys(topk):
    predictions = _predictions()
    ours = _evaluate(dict(type='Accuracy', topk=topk), predictions)
    theirs = _evaluate(
        [dict(type='mmpretrain.Accuracy', topk=topk), dict(type='PerHeadAccuracy')], predictions
    )
    assert ours == theirs  # the same keys and numbers as the two metrics side by side
    assert {f'accuracy/top{k}' for k in topk} | {'per_head/cls_top1'} <= set(ours)


def test_per_head_off_and_other_heads_give_mmpretrains_keys_only():
    predictions = _predictions()
    off = _evaluate(dict(type='Accuracy', topk=(1, 5), per_head=False), predictions)
    assert set(off) == {'accuracy/top1', 'accuracy/top5'}
    linear = _evaluate(dict(type='Accuracy', topk=(1,)), _predictions('LinearClsHead'))
    assert set(linear) == {'accuracy/top1'}


def test_a_prefix_applies_to_the_top_k_keys_only():
    metric = DeiTAccuracy(prefix='val')
    metric.process(None, _predictions())
    keys = set(metric.evaluate(12))
    assert 'val/top1' in keys and 'per_head/cls_top1' in keys
    assert not any(k.startswith('val/per_head') for k in keys)


def test_a_top_k_beyond_the_data_sets_classes_is_refused_when_it_is_set():
    metric = DeiTAccuracy(topk=(1, 5))
    with pytest.raises(ValueError, match=r'topk=\(1, 5\) asks for top-5 of only 3 classes'):
        metric.dataset_meta = dict(classes=('cat', 'dog', 'fox'))
    metric.dataset_meta = dict(classes=tuple('abcde'))  # 5 classes: fine
    assert metric.dataset_meta['classes'] == tuple('abcde')
    DeiTAccuracy(topk=(1,)).dataset_meta = dict(classes=('cat', 'dog', 'fox'))


def test_per_head_accuracy_is_still_there_for_mmpretrains_accuracy():
    assert issubclass(DeiTAccuracy, MMPretrainAccuracy)
    with DefaultScope.overwrite_default_scope('mmdeit'):
        assert isinstance(METRICS.build(dict(type='PerHeadAccuracy')), PerHeadAccuracy)
