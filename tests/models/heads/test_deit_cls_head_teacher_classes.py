"""DeiTClsHead with ``teacher_num_classes``: head_dist predicts the teacher's classes."""

import pytest
import torch
from mmpretrain.structures import DataSample

from mmdeit.models.heads import DeiTClsHead

B, C, K, T = 3, 8, 4, 6  # batch, channels, student classes, teacher classes


def _feats():
    gen = torch.Generator().manual_seed(0)
    return ((torch.randn(B, C, generator=gen), torch.randn(B, C, generator=gen)),)


@pytest.mark.parametrize('hidden_dim', [None, 5])
@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_head_dist_is_sized_to_the_teacher_classes(hidden_dim, mode):
    head = DeiTClsHead(
        num_classes=K,
        in_channels=C,
        hidden_dim=hidden_dim,
        inference_mode='cls',
        teacher_num_classes=T,
        loss=dict(type='DistillationLoss', mode=mode),
    )
    head.init_weights()
    assert head.teacher_num_classes == T
    assert head.layers.head_dist.out_features == T and head.layers.head.out_features == K
    cls_score, dist_score = head.forward_logits(_feats())
    assert cls_score.shape == (B, K) and dist_score.shape == (B, T)
    assert head(_feats()).shape == (B, K)
    samples = [DataSample().set_gt_label(i) for i in range(B)]
    losses = head.loss(_feats(), samples, teacher_logits=torch.randn(B, T))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert head.layers.head_dist.weight.grad.abs().sum() > 0


def test_default_is_the_student_classes():
    head = DeiTClsHead(num_classes=K, in_channels=C)
    assert head.teacher_num_classes == K and head.layers.head_dist.out_features == K
    # The same count given explicitly keeps every inference mode.
    DeiTClsHead(num_classes=K, in_channels=C, teacher_num_classes=K, inference_mode='fusion')


@pytest.mark.parametrize('inference_mode', ['fusion', 'dist'])
def test_other_teacher_classes_need_cls_inference(inference_mode):
    with pytest.raises(ValueError, match=f"inference_mode '{inference_mode}' uses head_dist"):
        DeiTClsHead(
            num_classes=K, in_channels=C, teacher_num_classes=T, inference_mode=inference_mode
        )


@pytest.mark.parametrize(
    'value, error', [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_teacher_num_classes(value, error):
    with pytest.raises(error, match='teacher_num_classes must be a positive int or None'):
        DeiTClsHead(num_classes=K, in_channels=C, teacher_num_classes=value, inference_mode='cls')
