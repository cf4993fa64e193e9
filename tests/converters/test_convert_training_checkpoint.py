"""Converting mmdeit's own training checkpoints, and a dist head whose bias is exactly zero.

A student trained with ``DistillationLoss(mode='none')`` never updates ``head_dist``: its bias
stays exactly 0 (its weight only decays). Publishing such a student to timm or HF users goes
through ``tools/model_converters/deit_to_mmdeit.py`` on an mmengine Runner checkpoint.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from mmengine.runner import Runner
from timm.models.deit import VisionTransformerDistilled
from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

from mmdeit.converters import mmdeit_to_hf, to_mmdeit
from mmdeit.engine import safe_load
from mmdeit.registry import MODELS

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'model_converters' / 'deit_to_mmdeit.py'
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
IMG, PATCH, NUM_CLASSES = 32, 16, 2
HF_LAYOUT = 'v5' if int(transformers.__version__.split('.')[0]) >= 5 else 'legacy'
HF_CFG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=IMG,
    patch_size=PATCH,
    num_labels=NUM_CLASSES,
    layer_norm_eps=1e-6,
)


def _runner_cfg(image_folder: Path, work_dir: Path) -> dict:
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(IMG, IMG)),
        dict(type='PackInputs'),
    ]
    return dict(
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[127.5] * 3, std=[64.0] * 3),
            backbone=dict(
                type='DistilledVisionTransformer', arch=ARCH, img_size=IMG, patch_size=PATCH
            ),
            head=dict(
                type='DeiTClsHead',
                num_classes=NUM_CLASSES,
                in_channels=ARCH['embed_dims'],
                loss=dict(type='DistillationLoss', mode='none'),
            ),
        ),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            dataset=dict(type='CustomDataset', data_root=str(image_folder), pipeline=pipeline),
        ),
        train_cfg=dict(by_epoch=False, max_iters=2),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        custom_hooks=[dict(type='EMAHook', momentum=0.5)],
        randomness=dict(seed=0, deterministic=True),
        default_scope='mmdeit',
    )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(checkpoint path, deployed model) of a 2-iteration mmengine Runner training."""
    from ..conftest import make_image_folder

    root = tmp_path_factory.mktemp('runner_ckpt')
    runner = Runner.from_cfg(_runner_cfg(make_image_folder(root / 'images'), root / 'work'))
    runner.train()
    ckpt = root / 'work' / 'iter_2.pth'
    # The checkpoint's state_dict holds the EMA weights (EMAHook swaps them in for deployment).
    (ema_hook,) = [h for h in runner.hooks if type(h).__name__ == 'EMAHook']
    model = ema_hook.ema_model.module.eval()
    return ckpt, model


def _convert(src: Path, dst: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The converter as a user runs it: a subprocess in ``cwd``."""
    return subprocess.run(
        [sys.executable, str(TOOL), str(src), str(dst), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _convert_here(src: Path, dst: Path, *args: str, cwd: Path, monkeypatch) -> int:
    """The converter's ``main`` in this process, in ``cwd``: the same code as the subprocess
    (which test_cli.py and the refusal test below run) without another 15 s import."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('deit_to_mmdeit', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.chdir(cwd)
    return tool.main([str(src), str(dst), *args])


def test_runner_checkpoint_has_what_mmengine_writes(trained):
    ckpt, model = trained
    saved = safe_load(str(ckpt))
    assert {'meta', 'state_dict', 'message_hub', 'optimizer', 'ema_state_dict'} <= set(saved)
    # mode 'none' leaves the dist head's bias at exactly zero, its weight not.
    assert not model.head.layers.head_dist.bias.any()
    assert model.head.layers.head_dist.weight.any()
    for key, value in model.state_dict().items():
        assert torch.equal(saved['state_dict'][key], value), key


def test_cli_converts_runner_checkpoint_to_timm(trained, tmp_path, monkeypatch):
    ckpt, model = trained
    rc = _convert_here(ckpt, Path('student_timm.pth'), '--to', 'timm', cwd=tmp_path,
                       monkeypatch=monkeypatch)  # fmt: skip
    assert rc == 0
    written = torch.load(tmp_path / 'student_timm.pth', map_location='cpu', weights_only=True)
    ours = model.state_dict()
    for timm_key, key in [
        ('head_dist.bias', 'head.layers.head_dist.bias'),
        ('blocks.1.mlp.fc2.weight', 'backbone.layers.1.ffn.layers.1.weight'),
    ]:
        assert torch.equal(written[timm_key], ours[key]), timm_key
    timm_model = VisionTransformerDistilled(
        img_size=IMG, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
        num_classes=NUM_CLASSES,
    ).eval()  # fmt: skip
    timm_model.load_state_dict(written, strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), model(x, mode='tensor'), rtol=0, atol=1e-5)


def test_cli_converts_runner_checkpoint_to_hf(trained, tmp_path):
    ckpt, model = trained  # as a subprocess, the way a user converts
    result = _convert(ckpt, Path('hf.pth'), '--to', 'hf', '--hf-layout', HF_LAYOUT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    written = torch.load(tmp_path / 'hf.pth', map_location='cpu', weights_only=True)
    assert 'distillation_classifier.bias' in written
    assert not written['distillation_classifier.bias'].any()
    hf_model = DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_CFG)).eval()
    hf_model.load_state_dict(written, strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, model(x, mode='tensor'), rtol=0, atol=1e-5)


def test_cli_converts_runner_checkpoint_to_mmdeit(trained, tmp_path, monkeypatch):
    ckpt, model = trained
    rc = _convert_here(ckpt, Path('out') / 'student.pth', cwd=tmp_path, monkeypatch=monkeypatch)
    assert rc == 0
    written = safe_load(str(tmp_path / 'out' / 'student.pth'))
    assert written['meta']['converted_from'] == 'mmdeit'
    ours = model.state_dict()
    assert written['state_dict'].keys() == ours.keys()
    for key, value in ours.items():
        assert torch.equal(written['state_dict'][key], value), key
    MODELS.build(written['meta']['model_cfg']).load_state_dict(written['state_dict'], strict=True)
    assert os.listdir(tmp_path / 'out') == ['student.pth']  # no temporary file left


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo pwned > pwned.txt',))


def test_cli_still_refuses_a_pickle_that_runs_code(trained, tmp_path):
    ckpt, _ = trained
    evil = safe_load(str(ckpt))
    evil['meta']['payload'] = _RunsCode()
    torch.save(evil, tmp_path / 'evil.pth')
    result = _convert(tmp_path / 'evil.pth', Path('out.pth'), '--to', 'timm', cwd=tmp_path)
    assert result.returncode == 1
    assert 'Refused to load checkpoint' in result.stderr + result.stdout
    assert sorted(os.listdir(tmp_path)) == ['evil.pth']  # nothing ran, nothing was written


def test_hf_keeps_a_dist_head_whose_bias_is_exactly_zero():
    model = MODELS.build(
        dict(
            type='mmpretrain.ImageClassifier',
            backbone=dict(
                type='mmdeit.DistilledVisionTransformer', arch=ARCH, img_size=IMG, patch_size=PATCH
            ),
            head=dict(type='mmdeit.DeiTClsHead', num_classes=NUM_CLASSES, in_channels=32),
        )
    )
    model.init_weights()
    state_dict = model.state_dict()
    assert not state_dict['head.layers.head_dist.bias'].any()
    assert state_dict['head.layers.head_dist.weight'].any()
    hf = mmdeit_to_hf(state_dict, layout=HF_LAYOUT)
    assert 'distillation_classifier.bias' in hf and 'distillation_classifier.weight' in hf
    assert 'classifier.weight' not in hf
    DeiTForImageClassificationWithTeacher(DeiTConfig(**HF_CFG)).load_state_dict(hf, strict=True)
    back = to_mmdeit(hf)
    assert back.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(back[key], value), key
