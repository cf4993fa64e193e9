"""docs/custom_dataset.md, run as written: convert -> config -> train -> test -> infer -> export.

From a temporary folder of the user's, on a generated ``data/custom`` (3 class folders), with
the tutorial's own commands and config. What differs, to keep it under two minutes on 2 cores:
the "official weights" are a tiny timm ``VisionTransformerDistilled`` (32 dims, 2 layers, 32x32
input, 5 classes) saved in the official ``{'model': ...}`` layout under the official file name;
the teacher is timm's ``resnet10t`` with random weights; the user's config adds the tiny model
and input sizes below the tutorial's lines; training runs 1 epoch (``epoch_1.pth`` for
``epoch_30.pth``).
"""

import re
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO, run_cli

pytestmark = pytest.mark.journey

DOC = REPO / 'docs' / 'custom_dataset.md'
CLASSES = ('cat', 'dog', 'fox')
OFFICIAL_CLASSES = 5  # another count than the user's: the heads are re-initialised
TIMM_TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2)
TINY = """
# The test's tiny model and images (not in the tutorial).
tiny = dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
model['backbone'] = dict(arch=tiny, img_size=32)
model['head']['in_channels'] = 32
small_train = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.35, 1.0), backend='pillow'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
small_test = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=36, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=small_train))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=small_test))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
"""


def _doc_blocks(lang: str) -> list:
    """The ``lang`` code blocks of the tutorial's steps (not its digits-folder section, which
    tests/journeys/test_digits_folder.py runs)."""
    steps = DOC.read_text().split('## Try it on real images')[0]
    blocks, current = [], None
    for line in steps.splitlines():
        if current is None and line.startswith('```'):
            current = [] if line[3:].strip() == lang else False
        elif current is not None and line.startswith('```'):
            if current is not False:
                blocks.append('\n'.join(current) + '\n')
            current = None
        elif current not in (None, False):
            current.append(line)
    return blocks


def _doc_commands() -> list:
    """The tutorial's ``python -m mmdeit`` commands, in order, as word lists."""
    return [
        shlex.split(line)
        for block in _doc_blocks('bash')
        for line in block.splitlines()
        if line.startswith('python -m mmdeit ')
    ]


def _write_custom(root: Path, size=(40, 48)) -> None:
    rng = np.random.default_rng(0)
    for split, count in (('train', 3), ('val', 2)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                img[..., label] = 255  # a colour per class
                Image.fromarray(img).save(folder / f'{name}_{i}.jpg')


def _state_dict(path: Path) -> dict:
    from mmdeit.engine.checkpoint_loader import safe_load

    ckpt = safe_load(str(path), map_location='cpu')  # the user's own files: meta included
    for key in ('state_dict', 'model'):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt


def _init_weights(config: Path, num_classes: int) -> dict:
    """The student's state dict after ``init_weights`` (the recipe's ``init_cfg``)."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdeit.registry import MODELS

    cfg = Config.fromfile(str(config))
    cfg.model.head.num_classes = num_classes
    cfg.model.head.loss.mode = 'none'
    cfg.model.teacher, cfg.model.teacher_ckpt = None, None
    cfg.model.pop('data_preprocessor', None)
    with DefaultScope.overwrite_default_scope('mmdeit'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    return model.state_dict()


def test_custom_dataset_tutorial(tmp_path, monkeypatch):
    import timm
    from mmpretrain.models import TimmClassifier
    from timm.models.deit import VisionTransformerDistilled

    home = tmp_path
    _write_custom(home / 'data' / 'custom')
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 60, 3), np.uint8)).save(
        home / 'photo.jpg'
    )
    commands = _doc_commands()
    assert [c[3] for c in commands] == ['convert', 'train', 'test', 'infer', 'convert', 'convert']

    # 2. the "official weights" (tiny), converted by the tutorial's command
    torch.manual_seed(0)
    official = VisionTransformerDistilled(**TIMM_TINY, num_classes=OFFICIAL_CLASSES).eval()
    torch.save({'model': official.state_dict()}, home / commands[0][4])
    out = run_cli(commands[0][1:], home, 'convert').stdout
    assert f'num_classes={OFFICIAL_CLASSES}' in out, out[-3000:]
    converted = _state_dict(home / commands[0][5])

    # 3. the user's teacher: timm's resnet10t on the 3 classes, their checkpoint
    teacher = TimmClassifier(model_name='resnet10t', num_classes=len(CLASSES), pretrained=False)
    teacher_ckpt = home / 'checkpoints' / 'my_teacher_resnet10t.pth'
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)

    # 4. the tutorial's config, with the test's teacher and tiny sizes
    (config_text,) = _doc_blocks('python')
    config_text = config_text.replace('resnet50', 'resnet10t')
    assert 'num_classes = 3' in config_text and 'my_teacher_resnet10t.pth' in config_text
    config = home / 'my_finetune.py'
    config.write_text(config_text + TINY)

    # the recipe's init: converted backbone; heads of another class count re-initialised,
    # heads of the same count loaded
    monkeypatch.chdir(home)
    for num_classes in (len(CLASSES), OFFICIAL_CLASSES):
        start = _init_weights(config, num_classes)
        for key in (
            'backbone.layers.1.attn.qkv.weight',
            'backbone.dist_token',
            'backbone.ln1.weight',
        ):
            torch.testing.assert_close(start[key], converted[key], rtol=0, atol=0)
        for key in ('head.layers.head.weight', 'head.layers.head_dist.weight'):
            same = start[key].shape == converted[key].shape and torch.equal(
                start[key], converted[key]
            )
            assert same == (num_classes == OFFICIAL_CLASSES), key

    # 5. train: 1 epoch
    epochs = ('epoch_30.pth', 'epoch_1.pth')
    out = run_cli(commands[1][1:], home, 'train').stdout
    assert 'load model from' in out and 'Loaded the teacher from' in out, out[-3000:]
    assert re.search(r'size mismatch for head\.layers\.head\.weight', out), out[-3000:]
    assert 'teacher/accuracy_top1' in out and 'loss_distill' in out, out[-3000:]
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    ckpt = home / commands[2][5].replace(*epochs)
    assert ckpt.is_file()
    assert (
        torch.load(ckpt, map_location='cpu', weights_only=False)['meta']['dataset_meta']['classes']
        == CLASSES
    )

    # test, infer and export without the teacher's checkpoint, two at a time
    teacher_ckpt.rename(home / 'teacher_elsewhere.pth')
    rest = [[w.replace(*epochs) for w in c[1:]] for c in commands[2:]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        outs = list(pool.map(lambda i: run_cli(rest[i], home, f'step_{i}').stdout, range(4)))
    assert re.search(r'Epoch\(test\) \[\d+/\d+\]\s+accuracy/top1', outs[0]), outs[0][-3000:]
    top = re.findall(r'^1\. (.+?)\s+([01]\.\d{4})\s+\(class (\d+)\)$', outs[1], re.M)
    assert top and top[0][0] == CLASSES[int(top[0][2])], outs[1][-3000:]
    assert 'Loaded the teacher' not in outs[0] + outs[1]

    # 6. the timm export loads strictly into timm; the HF one has DeiT's keys
    back = VisionTransformerDistilled(**TIMM_TINY, num_classes=len(CLASSES))
    back.load_state_dict(_state_dict(home / rest[2][4]), strict=True)
    assert timm.__version__
    hf = _state_dict(home / rest[3][4])
    assert 'distillation_classifier.weight' in hf and 'deit.embeddings.cls_token' in hf, list(hf)
