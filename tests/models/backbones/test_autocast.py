"""Mixed precision (bf16 autocast on the CPU, the stand-in for a GPU's AMP) with stochastic depth.

Every DeiT recipe has ``drop_path_rate > 0``; a training step in which some but not all samples
of a layer are dropped adds the kept samples' (bf16) branch into the (fp32) residual stream.
"""

import copy

import pytest
import torch
from mmpretrain.structures import DataSample

from mmdeit.models.backbones import (
    DistilledVisionTransformer,
    VisionTransformer,
    fast_transformer_layer,
)
from mmdeit.models.utils.drop_path import drop_path_mask, skip_dropped_samples
from mmdeit.registry import MODELS

from ...conftest import TINY_ARCH

BATCH = 8
IMG = 32
OUT_TYPES = VisionTransformer.OUT_TYPES
BACKBONES = (DistilledVisionTransformer, VisionTransformer)
FAST_PATH = pytest.mark.parametrize('fast_path', [False, True])


def _autocast():
    return torch.autocast('cpu', dtype=torch.bfloat16)


def _backbone(
    cls, out_type: str, drop_path_rate: float = 0.5, fast_path: bool = True
) -> VisionTransformer:
    torch.manual_seed(0)
    model = cls(
        arch=TINY_ARCH,
        img_size=IMG,
        patch_size=8,
        out_type=out_type,
        drop_path_rate=drop_path_rate,
        fast_path=fast_path,
    )
    with torch.no_grad():  # non-zero learnt tokens (init_weights would log every parameter)
        for name in ('pos_embed', *model.extra_tokens):
            getattr(model, name).normal_(std=0.02)
    return model


def _flat(outs) -> list:
    flat = []
    for out in outs:
        flat.extend(out if isinstance(out, tuple) else (out,))
    return flat


@pytest.fixture
def kept_counts(monkeypatch) -> list:
    """Records (kept, batch) of every stochastic-depth call of the layers."""
    counts = []

    def spy(identity, x, branch, drop_prob, kept_branch=None):
        def counted(t):
            counts.append((t.shape[0], x.shape[0]))
            return branch(t)

        def counted_kept(t, kept):  # the samples kept[...] of t, read where they are
            counts.append((kept.numel(), x.shape[0]))
            return kept_branch(t, kept)

        kept_spy = None if kept_branch is None else counted_kept
        return skip_dropped_samples(identity, x, counted, drop_prob, kept_spy)

    monkeypatch.setattr(fast_transformer_layer, 'skip_dropped_samples', spy)
    return counts


@FAST_PATH
@pytest.mark.parametrize('cls', BACKBONES, ids=lambda c: c.__name__)
@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_training_step_under_bf16_autocast(cls, out_type, fast_path, kept_counts):
    model = _backbone(cls, out_type, fast_path=fast_path).train()
    x = torch.randn(BATCH, 3, IMG, IMG)
    torch.manual_seed(1)
    with _autocast():
        outs = _flat(model(x))
    if fast_path:  # some layer kept some but not all samples (it crashed in index_add)
        assert any(0 < kept < batch for kept, batch in kept_counts), kept_counts
    else:  # the reference computes every sample's branch and multiplies by the mask
        assert kept_counts == []
    assert all(o.dtype in (torch.float32, torch.bfloat16) for o in outs)
    sum(o.float().square().mean() for o in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(param.grad).all(), f'{name} has a non-finite gradient'
    # The same drop masks in fp32: the bf16 step computes the same function.
    fp32_model = copy.deepcopy(model)
    torch.manual_seed(1)
    want = _flat(fp32_model(x))
    for got, ref in zip(outs, want, strict=True):
        torch.testing.assert_close(got.float(), ref, rtol=0.05, atol=0.1)


@FAST_PATH
@pytest.mark.parametrize('cls', BACKBONES, ids=lambda c: c.__name__)
@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_eval_under_bf16_autocast_is_close_to_fp32(cls, out_type, fast_path):
    model = _backbone(cls, out_type, fast_path=fast_path).eval()
    x = torch.randn(BATCH, 3, IMG, IMG)
    with torch.no_grad():
        want = _flat(model(x))
        with _autocast():
            got = _flat(model(x))
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g.float(), w, rtol=0.05, atol=0.1)


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('out_type', OUT_TYPES)
def test_fast_path_is_close_to_reference_under_bf16_autocast(out_type, train):
    """The same seed draws the same stochastic depth masks on both paths (the reference draws
    them in bf16, the fast path in fp32: the same random stream, the same floor here)."""
    fast = _backbone(DistilledVisionTransformer, out_type).train(train)
    ref = _backbone(DistilledVisionTransformer, out_type, fast_path=False).train(train)
    ref.load_state_dict(fast.state_dict(), strict=True)
    x = torch.randn(BATCH, 3, IMG, IMG)
    results = []
    for model in (fast, ref):
        torch.manual_seed(1)
        with _autocast():
            outs = _flat(model(x))
        sum(o.float().square().mean() for o in outs).backward()
        results.append((outs, [p.grad for p in model.parameters()]))
    (got, got_grads), (want, want_grads) = results
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=0.05, atol=0.05)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0.1, atol=0.01)


@pytest.mark.parametrize(
    'drop_prob, case', [(1e-6, 'all kept'), (1 - 1e-6, 'none kept'), (0.5, 'some kept')]
)
@pytest.mark.parametrize('seed', [0, 1])
def test_skip_dropped_samples_keeps_the_stream_dtype(drop_prob, case, seed):
    """Each case returns the residual stream's dtype (fp32) for a bf16 branch."""
    identity = torch.randn(BATCH, 5, 6)
    x = torch.randn(BATCH, 5, 6)
    linear = torch.nn.Linear(6, 6)
    torch.manual_seed(seed)
    kept = int(drop_path_mask(x, drop_prob).sum())
    assert {'all kept': kept == BATCH, 'none kept': kept == 0}.get(case, 0 < kept < BATCH)
    torch.manual_seed(seed)
    with _autocast():
        out = skip_dropped_samples(identity, x, linear, drop_prob)
    assert out.dtype == torch.float32
    torch.manual_seed(seed)
    want = identity + drop_path_mask(x, drop_prob).view(-1, 1, 1) * linear(x) / (1 - drop_prob)
    torch.testing.assert_close(out, want, rtol=0.02, atol=0.05)


NUM_CLASSES = 4


def _classifier(tmp_path, mode: str, fast_path: bool = True):
    """A tiny DeiT student (drop path 0.5) with a tiny saved ResNet teacher."""
    teacher_cfg = dict(
        type='ImageClassifier',
        backbone=dict(
            type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8, out_indices=(3,)
        ),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=NUM_CLASSES, in_channels=64),
    )
    torch.manual_seed(0)
    path = tmp_path / 'teacher.pth'
    torch.save({'state_dict': MODELS.build(teacher_cfg).state_dict()}, path)
    return MODELS.build(
        dict(
            type='DistilledImageClassifier',
            backbone=dict(
                type='DistilledVisionTransformer',
                arch=TINY_ARCH,
                img_size=IMG,
                patch_size=8,
                drop_path_rate=0.5,
                fast_path=fast_path,
            ),
            head=dict(
                type='DeiTClsHead',
                num_classes=NUM_CLASSES,
                in_channels=TINY_ARCH['embed_dims'],
                loss=dict(type='DistillationLoss', mode=mode, alpha=0.5, tau=1.0),
            ),
            teacher=teacher_cfg,
            teacher_ckpt=str(path),
            data_preprocessor=dict(
                num_classes=NUM_CLASSES, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False
            ),
        )
    )


def _batch(n: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, IMG, IMG), generator=gen, dtype=torch.uint8)
    inputs = list(images.unbind(0))
    samples = [DataSample().set_gt_label(i % NUM_CLASSES) for i in range(n)]
    return dict(inputs=inputs, data_samples=samples)


@FAST_PATH
@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_distilled_classifier_step_under_bf16_autocast(tmp_path, mode, fast_path, kept_counts):
    model = _classifier(tmp_path, mode, fast_path).train()
    torch.manual_seed(1)
    data = model.data_preprocessor(_batch(BATCH), True)
    with _autocast():
        losses = model(**data, mode='loss')
    assert any(0 < kept < batch for kept, batch in kept_counts) is fast_path, kept_counts
    assert set(losses) == {'loss_cls', 'loss_distill'}
    loss = sum(losses.values())
    assert torch.isfinite(loss) and losses['loss_distill'] > 0
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(param.grad).all(), f'{name} has a non-finite gradient'
    assert model.head.layers.head_dist.weight.grad.abs().sum() > 0  # the distillation head learns
