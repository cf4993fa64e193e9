"""PerHeadAccuracy: each head's top-1, the teacher's, and their agreement, from real forwards."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmpretrain.structures import DataSample

from mmdeit.evaluation import PerHeadAccuracy
from mmdeit.models.classifiers import DistilledImageClassifier
from mmdeit.models.heads import DeiTClsHead
from mmdeit.registry import METRICS

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def _samples(rows):
    """Prediction dicts as mmengine's Evaluator hands them to a metric (``to_dict()``)."""
    out = []
    for row in rows:
        sample = DataSample().set_gt_label(row.pop('gt'))
        for key, value in row.items():
            sample.set_field(torch.tensor([value]), key)
        out.append(sample.to_dict())
    return out


def test_counts_each_head_the_teacher_and_the_agreements():
    metric = PerHeadAccuracy()
    rows = [  # gt, cls, dist, fused, model output (= fused), teacher
        dict(gt=0, pred_label_cls=0, pred_label_dist=1, pred_label_fused=0, pred_label=0),
        dict(gt=1, pred_label_cls=0, pred_label_dist=1, pred_label_fused=1, pred_label=1),
        dict(gt=2, pred_label_cls=2, pred_label_dist=2, pred_label_fused=2, pred_label=2),
        dict(gt=3, pred_label_cls=0, pred_label_dist=0, pred_label_fused=0, pred_label=0),
    ]
    for row, teacher in zip(rows, (1, 1, 2, 3)):
        row['teacher_pred_label'] = teacher
    metric.process(None, _samples(rows))
    result = metric.evaluate(4)
    assert result == {
        'per_head/cls_top1': 50.0,
        'per_head/dist_top1': 50.0,
        'per_head/fused_top1': 75.0,
        'per_head/teacher_top1': 75.0,
        'per_head/teacher_agreement': 50.0,  # samples 1, 2
        'per_head/dist_teacher_agreement': 75.0,  # samples 0, 1, 2
    }


def test_keys_are_left_out_when_their_fields_are():
    metric = PerHeadAccuracy(prefix='heads')
    metric.process(None, _samples([dict(gt=1, pred_label_cls=1, pred_label_dist=1)]))
    # no fused label: the dist head predicts a teacher's other classes, so no dist top-1
    assert metric.evaluate(1) == {'heads/cls_top1': 100.0}


def test_a_head_without_per_head_labels_is_named():
    metric = METRICS.build(dict(type='PerHeadAccuracy'))
    with pytest.raises(KeyError, match='DeiTClsHead'):
        metric.process(None, _samples([dict(gt=0, pred_label=0)]))


def _head(num_classes=5, teacher_num_classes=None, inference_mode='fusion'):
    torch.manual_seed(0)
    return DeiTClsHead(
        num_classes=num_classes,
        in_channels=8,
        teacher_num_classes=teacher_num_classes,
        inference_mode=inference_mode,
    )


@pytest.mark.parametrize('inference_mode', ['fusion', 'cls', 'dist'])
def test_head_labels_every_prediction_with_each_heads_argmax(inference_mode):
    head = _head(inference_mode=inference_mode)
    tokens = (torch.randn(6, 8), torch.randn(6, 8))
    cls_score, dist_score = head.forward_logits([tokens])
    samples = head.predict([tokens])
    expected = {
        'cls': cls_score.argmax(1),
        'dist': dist_score.argmax(1),
        'fused': ((cls_score + dist_score) / 2).argmax(1),
    }
    for name, labels in expected.items():
        assert torch.equal(torch.cat([s.get(f'pred_label_{name}') for s in samples]), labels)
    output = {'fusion': 'fused', 'cls': 'cls', 'dist': 'dist'}[inference_mode]
    assert torch.equal(torch.cat([s.pred_label for s in samples]), expected[output])


def test_head_with_a_teacher_of_other_classes_has_no_fused_label():
    head = _head(num_classes=3, teacher_num_classes=7, inference_mode='cls')
    samples = head.predict([(torch.randn(2, 8), torch.randn(2, 8))])
    assert 'pred_label_fused' not in samples[0]
    assert int(samples[0].pred_label_dist) < 7


class _Teacher(nn.Module):
    num_classes = 4

    def forward(self, x):
        return x.flatten(1)[:, :4] * 10  # (B, 4): the teacher picks the brightest of 4 pixels


def _model(eval_teacher=True):
    backbone = dict(
        type='DistilledVisionTransformer',
        arch=dict(embed_dims=16, num_layers=1, num_heads=2, feedforward_channels=16),
        img_size=8,
        patch_size=4,
    )
    head = dict(
        type='DeiTClsHead',
        num_classes=4,
        in_channels=16,
        loss=dict(type='DistillationLoss', mode='hard', alpha=0.5),
    )
    return DistilledImageClassifier(
        backbone=backbone, head=head, teacher=_Teacher(), eval_teacher=eval_teacher
    ).eval()


def test_validation_runs_the_teacher_and_the_metric_reports_it():
    model = _model()
    inputs = torch.randn(5, 3, 8, 8)
    samples = [DataSample().set_gt_label(i % 4) for i in range(5)]
    with torch.no_grad():
        predictions = model.predict(inputs, samples)
    teacher = inputs.flatten(1)[:, :4].argmax(1)
    assert torch.equal(torch.cat([p.teacher_pred_label for p in predictions]), teacher)
    metrics = [dict(type='mmpretrain.Accuracy', topk=(1,)), dict(type='PerHeadAccuracy')]
    with DefaultScope.overwrite_default_scope('mmdeit'):
        evaluator = Evaluator(metrics)
    evaluator.process(predictions)
    metrics = evaluator.evaluate(5)
    gt = torch.arange(5) % 4
    assert metrics['per_head/teacher_top1'] == pytest.approx(100.0 * (teacher == gt).float().mean())
    assert metrics['per_head/fused_top1'] == metrics['accuracy/top1']
    fused = torch.cat([p.pred_label for p in predictions])
    agreement = 100.0 * (fused == teacher).float().mean()
    assert metrics['per_head/teacher_agreement'] == pytest.approx(agreement)


def test_eval_teacher_off_leaves_the_teacher_out():
    with torch.no_grad():
        predictions = _model(eval_teacher=False).predict(torch.randn(2, 3, 8, 8))
    assert 'teacher_pred_label' not in predictions[0]


def test_eval_teacher_must_be_a_bool():
    with pytest.raises(TypeError, match='eval_teacher'):
        _model(eval_teacher='yes')


def _shipped_deit_head_configs():
    found = []
    for path in sorted(CONFIGS.rglob('*.py')):
        if '_base_' in path.parts:
            continue
        cfg = Config.fromfile(str(path))
        head = cfg.get('model', {}).get('head') or {}
        if isinstance(head, dict) and head.get('type') == 'DeiTClsHead':
            found.append((path.relative_to(CONFIGS).as_posix(), cfg))
    return found


def test_every_shipped_deit_head_config_reports_per_head_accuracy():
    """Through mmdeit's Accuracy (type='Accuracy' in the mmdeit scope) or PerHeadAccuracy."""
    configs = _shipped_deit_head_configs()
    assert len(configs) >= 6  # the distilled ImageNet recipes, digits students, custom
    for name, cfg in configs:
        assert cfg.default_scope == 'mmdeit', name
        for key in ('val_evaluator', 'test_evaluator'):
            evaluators = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
            with DefaultScope.overwrite_default_scope('mmdeit'):
                metrics = [METRICS.build(e) for e in evaluators]
            assert any(
                isinstance(m, PerHeadAccuracy) or getattr(m, 'per_head', False) for m in metrics
            ), (name, key, evaluators)
