"""Tests of DeiTClsHead: keys, prediction modes, training losses and bad input."""

from unittest import TestCase

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models.heads import DeiTClsHead as MMPretrainDeiTClsHead
from mmpretrain.structures import DataSample

from mmdeit.models.heads import DeiTClsHead
from mmdeit.models.losses import DistillationLoss
from mmdeit.registry import MODELS

B, C, K = 3, 8, 4  # batch, channels, classes


def _feats(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cls_token = torch.randn(B, C, generator=gen)
    dist_token = torch.randn(B, C, generator=gen)
    return ((cls_token, dist_token),)


def _samples(labels=(0, 1, 3)):
    return [DataSample().set_gt_label(label) for label in labels]


def _head(**kwargs) -> DeiTClsHead:
    head = DeiTClsHead(num_classes=K, in_channels=C, **kwargs)
    head.init_weights()
    return head


def test_registered_in_mmdeit_scope():
    head = MODELS.build(dict(type='DeiTClsHead', num_classes=K, in_channels=C))
    assert type(head) is DeiTClsHead


@pytest.mark.parametrize('hidden_dim', [None, 6])
def test_state_dict_keys_match_mmpretrain(hidden_dim):
    head = _head(hidden_dim=hidden_dim)
    reference = MMPretrainDeiTClsHead(num_classes=K, in_channels=C, hidden_dim=hidden_dim)
    assert set(head.state_dict()) == set(reference.state_dict())
    assert {
        'layers.head.weight',
        'layers.head.bias',
        'layers.head_dist.weight',
        'layers.head_dist.bias',
    } <= set(head.state_dict())
    reference.load_state_dict(head.state_dict(), strict=True)
    head.eval()
    reference.eval()
    # Fusion prediction is mmpretrain's output for the same weights and tokens.
    with torch.no_grad():
        assert torch.allclose(head(_feats()), reference(_feats()), atol=1e-6)


def test_init_is_truncated_normal_not_zero():
    head = _head()
    for linear in (head.layers.head, head.layers.head_dist):
        assert linear.weight.abs().sum() > 0
        assert linear.weight.std().item() < 0.05
        assert torch.all(linear.bias == 0)


@pytest.mark.parametrize('mode', ['fusion', 'cls', 'dist'])
def test_predict_modes_give_documented_logits(mode):
    head = _head(inference_mode=mode)
    feats = _feats()
    cls_token, dist_token = feats[-1]
    cls_logits = cls_token @ head.layers.head.weight.T + head.layers.head.bias
    dist_logits = dist_token @ head.layers.head_dist.weight.T + head.layers.head_dist.bias
    expected = {'fusion': (cls_logits + dist_logits) / 2, 'cls': cls_logits, 'dist': dist_logits}[
        mode
    ]
    with torch.no_grad():
        assert torch.allclose(head(feats), expected, atol=1e-6)
        samples = head.predict(feats)
    scores = torch.stack([s.pred_score for s in samples])
    assert torch.allclose(scores, F.softmax(expected, dim=1), atol=1e-6)
    assert [s.pred_label.item() for s in samples] == expected.argmax(1).tolist()


def test_hidden_dim_is_shared_by_both_tokens():
    head = _head(hidden_dim=6, inference_mode='dist')
    feats = _feats()
    _, dist_token = feats[-1]
    hidden = torch.tanh(head.layers.pre_logits(dist_token))
    with torch.no_grad():
        assert torch.allclose(head(feats), head.layers.head_dist(hidden), atol=1e-6)


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_loss_trains_both_heads_with_teacher(mode):
    head = _head(loss=dict(type='DistillationLoss', mode=mode, alpha=0.5, tau=2.0))
    feats = _feats()
    teacher = torch.randn(B, K)
    losses = head.loss(feats, _samples(), teacher_logits=teacher)
    assert set(losses) == {'loss_cls', 'loss_distill'}
    cls_logits, dist_logits = head.forward_logits(feats)
    expected = DistillationLoss(mode=mode, alpha=0.5, tau=2.0)(
        cls_logits, dist_logits, torch.tensor([0, 1, 3]), teacher
    )
    for key in losses:
        assert torch.allclose(losses[key], expected[key])
    sum(losses.values()).backward()
    assert head.layers.head.weight.grad.abs().sum() > 0
    assert head.layers.head_dist.weight.grad.abs().sum() > 0


def test_loss_uses_soft_scores_from_batch_augments():
    head = _head(loss=dict(type='DistillationLoss', mode='hard'))
    feats = _feats()
    teacher = torch.randn(B, K)
    scores = torch.softmax(torch.randn(B, K), dim=1)
    samples = _samples()
    for sample, score in zip(samples, scores):
        sample.set_gt_score(score)
    losses = head.loss(feats, samples, teacher_logits=teacher)
    cls_logits, _ = head.forward_logits(feats)
    base = -(scores * cls_logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(losses['loss_cls'], base * 0.5, atol=1e-6)


def test_none_mode_needs_no_teacher():
    head = _head(loss=dict(type='DistillationLoss', mode='none'), inference_mode='cls')
    feats = _feats()
    losses = head.loss(feats, _samples())
    cls_logits, _ = head.forward_logits(feats)
    assert torch.allclose(losses['loss_cls'], F.cross_entropy(cls_logits, torch.tensor([0, 1, 3])))
    assert losses['loss_distill'].item() == 0.0
    sum(losses.values()).backward()
    assert torch.all(head.layers.head_dist.weight.grad == 0)


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_loss_without_teacher_logits_is_an_error(mode):
    head = _head(loss=dict(type='DistillationLoss', mode=mode))
    with pytest.raises(ValueError, match='teacher'):
        head.loss(_feats(), _samples())


def test_cal_acc_reports_accuracy_of_prediction_logits():
    head = _head(cal_acc=True, inference_mode='cls')
    feats = _feats()
    cls_logits, _ = head.forward_logits(feats)
    labels = cls_logits.argmax(1).tolist()
    losses = head.loss(feats, _samples(labels))
    assert losses['accuracy_top-1'].item() == pytest.approx(100.0)


def test_bad_inference_mode():
    with pytest.raises(ValueError, match='inference_mode'):
        DeiTClsHead(num_classes=K, in_channels=C, inference_mode='mean')


def test_loss_must_be_distillation_loss():
    with pytest.raises(TypeError, match='DistillationLoss'):
        DeiTClsHead(num_classes=K, in_channels=C, loss=dict(type='CrossEntropyLoss'))


def test_bad_num_classes():
    with pytest.raises(ValueError, match='num_classes'):
        DeiTClsHead(num_classes=0, in_channels=C)


def test_feats_without_dist_token_is_an_error():
    head = _head()
    with pytest.raises(TypeError, match='dist_token'):
        head((torch.randn(B, C),))


@pytest.mark.parametrize('container', [tuple, list])
def test_legacy_triple_with_patch_token_matches_the_pair(container):
    head = _head(hidden_dim=6)
    cls_token, dist_token = _feats()[-1]
    patch_token = torch.randn(B, 2, 2, C)
    with torch.no_grad():
        want = head(((cls_token, dist_token),))
        got = head((container([patch_token, cls_token, dist_token]),))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    'last, found',
    [
        ((torch.randn(B, C),) * 4, 'tuple of length 4'),
        ((torch.randn(B, C),), 'tuple of length 1'),
        ([], 'list of length 0'),
        ((torch.randn(B, C), 'dist'), 'tuple holding str'),
        ([None, torch.randn(B, C), torch.randn(B, C)], 'list holding NoneType'),
        ({'cls': 1, 'dist': 2}, 'dict'),
    ],
)
def test_bad_last_output_names_what_is_expected(last, found):
    head = _head()
    expected = r'pair \(cls_token, dist_token\).*triple \(patch_token, cls_token, dist_token\)'
    with pytest.raises(TypeError, match=f'{expected}; got a {found}$'):
        head((last,))


class TestDeiTClsHeadFromMMPretrain(TestCase):
    """mmpretrain 1.x's ``TestDeiTClsHead``, run against mmdeit's head.

    Ported from open-mmlab/mmpretrain, tests/test_models/test_heads.py, class
    ``TestDeiTClsHead`` with the cases it inherits from ``TestVisionTransformerClsHead``
    (``test_initialize``, ``test_pre_logits``, ``test_forward``), built in mmdeit's registry: a
    drop-in replacement passes them. Their last output is mmpretrain's legacy triple
    ``[patch_token, cls_token, dist_token]``.
    """

    DEFAULT_ARGS = dict(type='DeiTClsHead', in_channels=10, num_classes=5)
    fake_feats = ([torch.rand(4, 7, 7, 16), torch.rand(4, 10), torch.rand(4, 10)],)

    def test_initialize(self):
        with self.assertRaisesRegex(ValueError, 'num_classes=-5 must be'):
            MODELS.build({**self.DEFAULT_ARGS, 'num_classes': -5})

        # test vit head default
        head = MODELS.build(self.DEFAULT_ARGS)
        assert not hasattr(head.layers, 'pre_logits')
        assert not hasattr(head.layers, 'act')

        # test vit head hidden_dim
        head = MODELS.build({**self.DEFAULT_ARGS, 'hidden_dim': 30})
        assert hasattr(head.layers, 'pre_logits')
        assert hasattr(head.layers, 'act')

        # test vit head init_weights
        head = MODELS.build(self.DEFAULT_ARGS)
        head.init_weights()

        # test vit head init_weights with hidden_dim
        head = MODELS.build({**self.DEFAULT_ARGS, 'hidden_dim': 30})
        head.init_weights()
        assert abs(head.layers.pre_logits.weight).sum() > 0

    def test_pre_logits(self):
        # test default
        head = MODELS.build(self.DEFAULT_ARGS)
        cls_token, dist_token = head.pre_logits(self.fake_feats)
        self.assertIs(cls_token, self.fake_feats[-1][1])
        self.assertIs(dist_token, self.fake_feats[-1][2])

        # test hidden_dim
        head = MODELS.build({**self.DEFAULT_ARGS, 'hidden_dim': 30})
        cls_token, dist_token = head.pre_logits(self.fake_feats)
        self.assertEqual(cls_token.shape, (4, 30))
        self.assertEqual(dist_token.shape, (4, 30))

    def test_forward(self):
        # test default
        head = MODELS.build(self.DEFAULT_ARGS)
        outs = head(self.fake_feats)
        self.assertEqual(outs.shape, (4, 5))

        # test hidden_dim
        head = MODELS.build({**self.DEFAULT_ARGS, 'hidden_dim': 30})
        outs = head(self.fake_feats)
        self.assertEqual(outs.shape, (4, 5))
