"""The teacher under bf16 autocast (what ``--amp`` runs): its forward is computed in bf16, in
channels-last when asked, and the distillation loss stays finite and close to fp32's."""

import pytest
import torch

from mmdeit.registry import MODELS

from .test_distilled_image_classifier import _batch, _model_cfg, teacher_ckpt  # noqa: F401


def _autocast():
    return torch.autocast('cpu', dtype=torch.bfloat16)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('mode', ['hard', 'soft'])
def test_teacher_forward_in_bf16_under_autocast(teacher_ckpt, mode, channels_last):  # noqa: F811
    model = MODELS.build(
        _model_cfg(teacher_ckpt, mode=mode, teacher_channels_last=channels_last)
    ).train()
    seen = []

    def record(module, args, out):
        seen.append((out.dtype, out.is_contiguous(memory_format=torch.channels_last)))

    model.teacher.backbone.conv1.register_forward_hook(record)
    data = model.data_preprocessor(_batch(4), training=True)
    inputs, samples = data['inputs'], data['data_samples']
    want_logits = model.teacher_logits(inputs)  # fp32
    assert seen.pop() == (torch.float32, channels_last)
    with _autocast():
        logits = model.teacher_logits(inputs)
        losses = model.loss(inputs, samples)
    # the teacher's convolutions ran in bf16 (autocast casts inside the op; in channels-last
    # if asked), twice
    assert seen == [(torch.bfloat16, channels_last)] * 2
    assert logits.dtype == torch.bfloat16 and not logits.is_inference()
    torch.testing.assert_close(logits.float(), want_logits, rtol=0.05, atol=0.05)
    loss = sum(losses.values())
    assert torch.isfinite(loss) and losses['loss_distill'] > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    fp32_losses = model.loss(inputs, samples)
    for key, value in losses.items():
        torch.testing.assert_close(value.float(), fp32_losses[key], rtol=0.05, atol=0.05)
