"""Tests of DistillationLoss against an independent implementation of the official formula."""

import math

import pytest
import torch

from mmdeit.models.losses import DistillationLoss

B, C = 6, 5


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    # Written out (no F.log_softmax) to stay independent of the implementation under test.
    shifted = x - x.max(dim=1, keepdim=True).values
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def _reference_total(
    cls_score, dist_score, target, teacher, mode, alpha, tau, smooth=0.0, soft_reduction='numel'
):
    """Official DeiT total loss (or its 'batchmean' variant), in float64, from first principles."""
    cls_score, dist_score, teacher = cls_score.double(), dist_score.double(), teacher.double()
    if target.dim() == 1:
        probs = torch.zeros(B, C, dtype=torch.float64)
        probs[torch.arange(B), target] = 1.0
    else:
        probs = target.double()
    probs = probs * (1 - smooth) + smooth / C  # 'original' label smoothing
    base = -(probs * _log_softmax(cls_score)).sum(dim=1).mean()
    if mode == 'none':
        return base
    if mode == 'hard':
        teacher_label = teacher.argmax(dim=1)
        distill = -_log_softmax(dist_score)[torch.arange(B), teacher_label].mean()
    else:
        log_p_student = _log_softmax(dist_score / tau)
        log_p_teacher = _log_softmax(teacher / tau)
        kl_sum = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
        distill = kl_sum * tau**2 / (B * C if soft_reduction == 'numel' else B)
    return base * (1 - alpha) + distill * alpha


def _inputs(soft_labels: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cls_score = torch.randn(B, C, generator=gen) * 3
    dist_score = torch.randn(B, C, generator=gen) * 3
    teacher = torch.randn(B, C, generator=gen) * 3
    labels = torch.randint(0, C, (B,), generator=gen)
    if soft_labels:
        # What mmpretrain's Mixup produces: lam * onehot(y) + (1 - lam) * onehot(y[perm]).
        lam = 0.7
        onehot = torch.nn.functional.one_hot(labels, C).float()
        perm = torch.randperm(B, generator=gen)
        target = lam * onehot + (1 - lam) * onehot[perm]
    else:
        target = labels
    return cls_score, dist_score, target, teacher


BASE_LOSSES = {
    'ce': (dict(type='CrossEntropyLoss', loss_weight=1.0), 0.0),
    'ce_soft': (dict(type='CrossEntropyLoss', use_soft=True, loss_weight=1.0), 0.0),
    'label_smooth': (dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'), 0.1),
}


# use_soft=True expects soft labels, so it is only paired with Mixup labels.
LABELS_AND_BASES = [
    (False, 'ce'),
    (False, 'label_smooth'),
    (True, 'ce'),
    (True, 'ce_soft'),
    (True, 'label_smooth'),
]


@pytest.mark.parametrize('mode', ['none', 'soft', 'hard'])
@pytest.mark.parametrize('soft_labels,base', LABELS_AND_BASES)
@pytest.mark.parametrize('alpha,tau', [(0.5, 1.0), (0.3, 3.0)])
def test_total_matches_official_formula(mode, soft_labels, base, alpha, tau):
    base_cfg, smooth = BASE_LOSSES[base]
    loss = DistillationLoss(mode=mode, alpha=alpha, tau=tau, base_loss=base_cfg)
    cls_score, dist_score, target, teacher = _inputs(soft_labels)
    out = loss(cls_score, dist_score, target, teacher)
    assert set(out) == {'loss_cls', 'loss_distill'}
    total = out['loss_cls'] + out['loss_distill']
    expected = _reference_total(cls_score, dist_score, target, teacher, mode, alpha, tau, smooth)
    assert abs(total.item() - expected.item()) < 1e-6
    base_only = _reference_total(cls_score, dist_score, target, teacher, 'none', alpha, tau, smooth)
    weight = 1.0 if mode == 'none' else 1 - alpha
    assert abs(out['loss_cls'].item() - weight * base_only.item()) < 1e-6


def test_soft_normalisation_is_numel_not_batch():
    # The official loss divides the summed KL by B * num_classes; dividing by B would give a
    # value num_classes times larger.
    loss = DistillationLoss(mode='soft', alpha=1.0, tau=1.0)
    cls_score, dist_score, target, teacher = _inputs(False, seed=1)
    distill = loss(cls_score, dist_score, target, teacher)['loss_distill']
    per_sample = torch.nn.functional.kl_div(
        dist_score.log_softmax(1), teacher.log_softmax(1), reduction='batchmean', log_target=True
    )
    assert math.isclose(distill.item() * C, per_sample.item(), rel_tol=1e-5)


@pytest.mark.parametrize('soft_reduction', ['numel', 'batchmean'])
@pytest.mark.parametrize('soft_labels,base', LABELS_AND_BASES)
@pytest.mark.parametrize('alpha,tau', [(0.5, 1.0), (0.3, 3.0), (1.0, 2.0)])
def test_soft_reductions_match_the_reference(soft_reduction, soft_labels, base, alpha, tau):
    base_cfg, smooth = BASE_LOSSES[base]
    loss = DistillationLoss(
        mode='soft', alpha=alpha, tau=tau, base_loss=base_cfg, soft_reduction=soft_reduction
    )
    cls_score, dist_score, target, teacher = _inputs(soft_labels, seed=2)
    out = loss(cls_score, dist_score, target, teacher)
    expected = _reference_total(
        cls_score, dist_score, target, teacher, 'soft', alpha, tau, smooth, soft_reduction
    )
    assert abs((out['loss_cls'] + out['loss_distill']).item() - expected.item()) < 1e-6


@pytest.mark.parametrize('tau', [1.0, 3.0])
def test_batchmean_is_num_classes_times_numel_and_alpha_maps_between_them(tau):
    cls_score, dist_score, target, teacher = _inputs(True, seed=3)
    dist_score.requires_grad_(True)

    def run(soft_reduction, alpha):
        loss = DistillationLoss(mode='soft', alpha=alpha, tau=tau, soft_reduction=soft_reduction)
        out = loss(cls_score, dist_score, target, teacher)
        total = out['loss_cls'] + out['loss_distill']
        (grad,) = torch.autograd.grad(total, dist_score)
        return out['loss_distill'] / alpha, total, grad

    alpha = 0.5
    distill_n, total_n, grad_n = run('numel', alpha)
    alpha_b = alpha / (alpha + C * (1 - alpha))  # the docstring's mapping
    distill_b, total_b, grad_b = run('batchmean', alpha_b)
    assert math.isclose(distill_b.item(), C * distill_n.item(), rel_tol=1e-5)  # same tau
    scale = C / (alpha + C * (1 - alpha))
    assert math.isclose(total_b.item(), scale * total_n.item(), rel_tol=1e-5)
    torch.testing.assert_close(grad_b, scale * grad_n, rtol=1e-5, atol=1e-7)
    back = C * alpha_b / (1 - alpha_b + C * alpha_b)  # and back
    assert math.isclose(back, alpha, rel_tol=1e-12)


@pytest.mark.parametrize('mode', ['none', 'hard'])
def test_soft_reduction_does_not_change_other_modes(mode):
    cls_score, dist_score, target, teacher = _inputs(False, seed=4)
    outs = [
        DistillationLoss(mode=mode, soft_reduction=r)(cls_score, dist_score, target, teacher)
        for r in ('numel', 'batchmean')
    ]
    assert outs[0]['loss_cls'].item() == outs[1]['loss_cls'].item()
    assert outs[0]['loss_distill'].item() == outs[1]['loss_distill'].item()
    assert "soft_reduction='numel'" in repr(DistillationLoss())


def test_none_mode_needs_no_teacher_and_keeps_dist_in_graph():
    loss = DistillationLoss(mode='none', alpha=0.9)
    cls_score, dist_score, target, _ = _inputs(False)
    dist_score.requires_grad_(True)
    out = loss(cls_score, dist_score, target)
    assert out['loss_distill'].item() == 0.0
    out['loss_distill'].backward()
    assert dist_score.grad is not None and torch.all(dist_score.grad == 0)


def test_teacher_gets_no_gradient():
    loss = DistillationLoss(mode='soft', tau=2.0)
    cls_score, dist_score, target, teacher = _inputs(True)
    dist_score.requires_grad_(True)
    teacher.requires_grad_(True)
    out = loss(cls_score, dist_score, target, teacher)
    (out['loss_cls'] + out['loss_distill']).backward()
    assert teacher.grad is None
    assert dist_score.grad is not None and dist_score.grad.abs().sum() > 0


@pytest.mark.parametrize('mode', ['soft', 'hard'])
def test_missing_teacher_score_is_an_error(mode):
    loss = DistillationLoss(mode=mode)
    cls_score, dist_score, target, _ = _inputs(False)
    with pytest.raises(ValueError, match='teacher_score'):
        loss(cls_score, dist_score, target)


def test_teacher_shape_mismatch_is_an_error():
    loss = DistillationLoss(mode='hard')
    cls_score, dist_score, target, _ = _inputs(False)
    with pytest.raises(ValueError, match='does not match'):
        loss(cls_score, dist_score, target, torch.randn(B, C + 1))


@pytest.mark.parametrize(
    'kwargs,error,match',
    [
        (dict(mode='kd'), ValueError, 'mode'),
        (dict(mode='Soft'), ValueError, 'mode'),
        (dict(alpha=-0.1), ValueError, 'alpha'),
        (dict(alpha=1.5), ValueError, 'alpha'),
        (dict(alpha='0.5'), TypeError, 'alpha'),
        (dict(alpha=True), TypeError, 'alpha'),
        (dict(tau=0.0), ValueError, 'tau'),
        (dict(tau=-1.0), ValueError, 'tau'),
        (dict(tau=None), TypeError, 'tau'),
        (dict(base_loss=42), TypeError, 'base_loss'),
        (dict(soft_reduction='mean'), ValueError, 'soft_reduction'),
        (dict(soft_reduction='Numel'), ValueError, 'soft_reduction'),
        (dict(soft_reduction=None), ValueError, 'soft_reduction'),
        (dict(mode='hard', soft_reduction='sum'), ValueError, 'soft_reduction'),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DistillationLoss(**kwargs)


def test_alpha_bounds_are_allowed():
    cls_score, dist_score, target, teacher = _inputs(False)
    out0 = DistillationLoss(mode='hard', alpha=0)(cls_score, dist_score, target, teacher)
    out1 = DistillationLoss(mode='hard', alpha=1)(cls_score, dist_score, target, teacher)
    assert out0['loss_distill'].item() == 0.0 and out1['loss_cls'].item() == 0.0
