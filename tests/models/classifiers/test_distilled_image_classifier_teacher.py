"""The teacher path of DistilledImageClassifier: inference mode, channels-last, usable targets."""

import pytest
import torch

from mmdeit.registry import MODELS

from .test_distilled_image_classifier import _batch, _model_cfg, teacher_ckpt  # noqa: F401


def _inputs(model, n: int = 2) -> tuple:
    data = model.data_preprocessor(_batch(n), training=True)
    return data['inputs'], data['data_samples']


def test_teacher_runs_in_inference_mode_and_returns_a_normal_tensor(teacher_ckpt):  # noqa: F811
    model = MODELS.build(_model_cfg(teacher_ckpt, mode='soft'))
    seen = []
    model.teacher.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    inputs, samples = _inputs(model)
    logits = model.teacher_logits(inputs)
    assert seen == [True]
    assert not logits.is_inference() and not logits.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(logits, model.teacher(inputs, mode='tensor'))
    # The soft loss saves the teacher's log-probabilities for backward: must not raise.
    losses = model.loss(inputs, samples)
    sum(losses.values()).backward()
    assert model.backbone.cls_token.grad is not None


def test_teacher_channels_last(teacher_ckpt):  # noqa: F811
    plain = MODELS.build(_model_cfg(teacher_ckpt, mode='hard'))
    fast = MODELS.build(_model_cfg(teacher_ckpt, mode='hard', teacher_channels_last=True))
    conv = fast.teacher.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    inputs, samples = _inputs(plain)
    torch.testing.assert_close(fast.teacher_logits(inputs), plain.teacher_logits(inputs))
    fast.load_state_dict(plain.state_dict())
    losses = fast.loss(inputs, samples)
    sum(losses.values()).backward()


def test_teacher_channels_last_must_be_a_bool(teacher_ckpt):  # noqa: F811
    with pytest.raises(TypeError, match='teacher_channels_last must be a bool'):
        MODELS.build(_model_cfg(teacher_ckpt, teacher_channels_last='yes'))
