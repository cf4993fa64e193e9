"""Bad input from across mmdeit: each case raises a clear error of the documented type, at the
place the mistake is made, whose message names the field (and the allowed values)."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from mmcv.transforms import LoadImageFromFile
from mmengine.config import Config
from PIL import Image

from mmdeit.apis import inference_model, init_model
from mmdeit.datasets import check_data_roots
from mmdeit.engine import TeacherCheckHook, UnsafeCheckpointError
from mmdeit.models.backbones import DistilledVisionTransformer
from mmdeit.models.heads import DeiTClsHead
from mmdeit.models.losses import DistillationLoss
from mmdeit.models.necks import SimpleFPN
from mmdeit.registry import DATASETS, MODELS

from .conftest import TINY_ARCH, make_image_folder

NUM_CLASSES = 2


def _vit(**kwargs):
    return DistilledVisionTransformer(
        **{'arch': TINY_ARCH, 'img_size': 32, 'patch_size': 8, **kwargs}
    )


def _student(mode):
    return dict(
        backbone=dict(type='DistilledVisionTransformer', arch=TINY_ARCH, img_size=32, patch_size=8),
        head=dict(
            type='DeiTClsHead',
            num_classes=NUM_CLASSES,
            in_channels=32,
            loss=dict(type='DistillationLoss', mode=mode),
        ),
    )


def _teacher(num_classes=NUM_CLASSES):
    return dict(
        type='ImageClassifier',
        backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8, base_channels=8),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=64),
    )


def _distilled(mode='soft', **kwargs):
    return MODELS.build(dict(type='DistilledImageClassifier', **_student(mode), **kwargs))


class Files:
    """The files the cases read, made once per module in a temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        cfg = dict(
            default_scope='mmdeit',
            model=dict(
                type='ImageClassifier',
                data_preprocessor=dict(num_classes=NUM_CLASSES, mean=[127.5] * 3, std=[64.0] * 3),
                **_student('none'),
            ),
            test_pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(32, 32)),
                dict(type='PackInputs'),
            ],
        )
        self.config = str(root / 'tiny.py')
        Config(cfg).dump(self.config)
        self.model = init_model(self.config)
        state = self.model.state_dict()
        self.ckpt = self._save('ok.pth', {'state_dict': state})
        self.ckpt_missing = self._save(
            'missing.pth', {'state_dict': {k: v for k, v in state.items() if 'pos_embed' not in k}}
        )
        self.ckpt_unexpected = self._save(
            'unexpected.pth', {'state_dict': {**state, 'head.foo.bar': torch.zeros(1)}}
        )
        data = Path(self.ckpt).read_bytes()
        self.ckpt_truncated = str(root / 'cut.pth')
        Path(self.ckpt_truncated).write_bytes(data[: len(data) // 2])
        self.ckpt_code = self._save('evil.pth', {'state_dict': {}, 'meta': _RunsCode()})

        rng = np.random.default_rng(0)
        png = root / 'ok.png'
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(png)
        self.image_truncated = str(root / 'cut.png')
        Path(self.image_truncated).write_bytes(png.read_bytes()[: png.stat().st_size // 2])
        self.image_junk = str(root / 'junk.jpg')
        Path(self.image_junk).write_bytes(b'this is not a JPEG file')

        self.empty_folder = str(root / 'empty')
        os.makedirs(self.empty_folder)
        self.flat_folder = root / 'flat'  # images, but not in class subfolders
        self.flat_folder.mkdir()
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            self.flat_folder / '0.png'
        )
        self.images = make_image_folder(root / 'images', per_class=1, size=(8, 8))

    def _save(self, name, obj):
        torch.save(obj, self.root / name)
        return str(self.root / name)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def _train_cfg(folder, **dataset):
    return Config(
        dict(
            train_dataloader=dict(
                dataset=dict(type='CustomDataset', data_root=str(folder), pipeline=[], **dataset)
            )
        )
    )


@dataclass
class Case:
    id: str
    run: Callable[[Files], object]
    error: type
    match: str  # regex the message must contain: the field, and what is allowed or found


CASES = [
    # --- backbone (build time)
    Case('arch name unknown', lambda f: _vit(arch='deit-huge'), ValueError,
         r"arch 'deit-huge' is unknown; choose from \[.*'deit-small'"),
    Case('arch dict missing keys',
         lambda f: _vit(arch=dict(embed_dims=32, num_layers=2, num_heads=2)), ValueError,
         r"arch dict is missing keys \['feedforward_channels'\]; it needs \('embed_dims'"),
    Case('img_size not divisible by patch_size', lambda f: _vit(img_size=30), ValueError,
         r'img_size \(30, 30\) must be divisible by patch_size \(8, 8\)'),
    Case('out_type unknown', lambda f: _vit(out_type='tokens'), ValueError,
         r"out_type must be one of \('cls_token', 'featmap', 'avg_featmap', 'raw'\), got 'tokens'"),
    Case('out_indices out of range', lambda f: _vit(out_indices=(0, 4)), ValueError,
         r'out_indices entry 4 is out of range for num_layers=4 \(allowed: -4\.\.3\)'),
    Case('frozen_stages out of range', lambda f: _vit(frozen_stages=5), ValueError,
         r'frozen_stages must be an int in \[-1, 4\] \(num_layers\), got 5'),
    Case('fast_path not a bool', lambda f: _vit(fast_path='off'), TypeError,
         r"fast_path must be True or False, got 'off'"),
    Case('image tensor with 1 channel', lambda f: _vit()(torch.rand(2, 1, 32, 32)), ValueError,
         r'expects images of shape \(B, 3, H, W\) \(in_channels=3\), got \(2, 1, 32, 32\)'),
    Case('image tensor without batch dim', lambda f: _vit()(torch.rand(3, 32, 32)), ValueError,
         r'expects images of shape \(B, 3, H, W\) \(in_channels=3\), got \(3, 32, 32\)'),
    # --- head and loss (build time)
    Case('inference_mode unknown',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32, inference_mode='both'), ValueError,
         r"inference_mode must be one of \('fusion', 'cls', 'dist'\), got 'both'"),
    Case('head tokens: a tuple of 4',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32)(((torch.rand(2, 32),) * 4,)),
         TypeError, r'pair \(cls_token, dist_token\) of tensors .* or the legacy triple '
         r'\(patch_token, cls_token, dist_token\); got a tuple of length 4'),
    Case('head tokens: not tensors',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32)(([0.5, 0.5],)), TypeError,
         r'pair \(cls_token, dist_token\) of tensors .*; got a list holding float, float'),
    Case('distillation mode unknown', lambda f: DistillationLoss(mode='kd'), ValueError,
         r"mode must be one of \('none', 'soft', 'hard'\), got 'kd'"),
    Case('alpha above 1', lambda f: DistillationLoss(alpha=1.5), ValueError,
         r'alpha must be in \[0\.0, 1\.0\], got 1\.5'),
    Case('alpha below 0', lambda f: DistillationLoss(alpha=-0.1), ValueError,
         r'alpha must be in \[0\.0, 1\.0\], got -0\.1'),
    Case('tau zero', lambda f: DistillationLoss(tau=0.0), ValueError,
         r'tau must be in \(0\.0, inf\], got 0\.0'),
    Case('tau negative', lambda f: DistillationLoss(tau=-2), ValueError,
         r'tau must be in \(0\.0, inf\], got -2'),
    Case('soft_reduction unknown',
         lambda f: DistillationLoss(mode='soft', soft_reduction='mean'), ValueError,
         r"soft_reduction must be one of \('numel', 'batchmean'\), got 'mean'"),
    # --- neck in mmdet ViTDet's form (build time)
    Case('ViTDet SimpleFPN in_channels of 3 levels',
         lambda f: SimpleFPN(backbone_channel=768, in_channels=[192, 384, 768]), ValueError,
         r'in_channels must have 4 entries \(the levels of scale 4, 2, 1, 0\.5\), got 3'),
    Case('ViTDet SimpleFPN backbone_channel not matching in_channels',
         lambda f: SimpleFPN(backbone_channel=1024, in_channels=[192, 384, 768, 768]),
         ValueError, r'in_channels \[192, 384, 768, 768\] does not match backbone_channel=1024: '
         r'the ViTDet levels have \[C/4, C/2, C, C\] = \[256, 512, 1024, 1024\]'),
    Case('ViTDet SimpleFPN mixed with scale_factors',
         lambda f: SimpleFPN(backbone_channel=768, in_channels=[192, 384, 768, 768],
                             scale_factors=(2.0, 1.0)), ValueError,
         r'scale_factors=\(2\.0, 1\.0\) cannot be combined with backbone_channel'),
    Case('ViTDet SimpleFPN backbone_channel with an int in_channels',
         lambda f: SimpleFPN(backbone_channel=768, in_channels=768), TypeError,
         r'in_channels must be the list \[C/4, C/2, C, C\] = \[192, 384, 768, 768\] when '
         r'backbone_channel=768 is given'),
    Case('SimpleFPN in_channels list without backbone_channel',
         lambda f: SimpleFPN(in_channels=[192, 384, 768, 768]), ValueError,
         r'in_channels \[192, 384, 768, 768\] is a list, .* needs backbone_channel'),
    # --- teacher (build time)
    Case('teacher/student class count mismatch',
         lambda f: _distilled(teacher=_teacher(num_classes=5)), ValueError,
         r'teacher has 5 classes but the student head has num_classes=2'),
    Case('teacher missing for soft', lambda f: _distilled('soft'), ValueError,
         r"distillation loss mode 'soft' needs a teacher"),
    Case('teacher missing for hard', lambda f: _distilled('hard'), ValueError,
         r"distillation loss mode 'hard' needs a teacher"),
    Case('teacher checkpoint path missing',
         lambda f: _distilled(teacher=_teacher(), teacher_ckpt=str(f.root / 'nope.pth')),
         FileNotFoundError, r"teacher_ckpt '.*nope\.pth' does not exist"),
    Case('teacher config file missing',
         lambda f: _distilled(teacher=str(f.root / 'nope.py')), FileNotFoundError,
         r"teacher config file '.*nope\.py' does not exist"),
    Case('teacher checkpoint truncated',
         lambda f: _distilled(teacher=_teacher(), teacher_ckpt=f.ckpt_truncated), RuntimeError,
         r'checkpoint .*cut\.pth: it is truncated'),
    # --- a teacher that differs from the student (build time)
    Case('teacher class count mismatch, teacher_num_classes unset',
         lambda f: _distilled(teacher=_teacher(num_classes=5)), ValueError,
         r"num_classes=2; they must match, or, .* set the head's teacher_num_classes=5"),
    Case('teacher class count differs from teacher_num_classes',
         lambda f: MODELS.build(dict(
             _student('soft'), type='DistilledImageClassifier', teacher=_teacher(num_classes=5),
             head=dict(_student('soft')['head'], teacher_num_classes=4, inference_mode='cls'))),
         ValueError, r'teacher has 5 classes but the student head has teacher_num_classes=4'),
    Case('teacher_num_classes with fusion inference',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32, teacher_num_classes=5), ValueError,
         r"inference_mode 'fusion' uses head_dist, which predicts the teacher's "
         r"teacher_num_classes=5 classes, not the student's num_classes=2; use "
         r"inference_mode='cls'"),
    Case('teacher_num_classes zero',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32, teacher_num_classes=0), ValueError,
         r'teacher_num_classes must be a positive int or None, got 0'),
    Case('teacher_num_classes not an int',
         lambda f: DeiTClsHead(num_classes=2, in_channels=32, teacher_num_classes='5'),
         TypeError, r"teacher_num_classes must be a positive int or None, got str '5'"),
    Case('teacher_input not a dict',
         lambda f: _distilled(teacher=_teacher(), teacher_input=(224, 224)), TypeError,
         r'teacher_input must be a dict\(size=\(H, W\), mean=\[\.\.\.\], std=\[\.\.\.\], .*got '
         r'tuple'),
    Case('teacher_input unknown key',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(img_size=(8, 8))),
         ValueError, r"teacher_input has unknown keys \['img_size'\]; allowed: \('size', "),
    Case('teacher_input.size an int',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(size=224)), ValueError,
         r'teacher_input\.size must be a pair \(H, W\) of positive ints, got 224'),
    Case('teacher_input.size with a zero',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(size=(0, 32))), ValueError,
         r'teacher_input\.size must be a pair \(H, W\) of positive ints, got \(0, 32\)'),
    Case('teacher_input.mean of 2 channels',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(mean=[1, 2])), ValueError,
         r'teacher_input\.mean must be a list of 3 numbers .*got \[1, 2\]'),
    Case('teacher_input.std with a zero',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(std=[1, 0, 1])), ValueError,
         r'teacher_input\.std must hold finite positive numbers, got \[1\.0, 0\.0, 1\.0\]'),
    Case('teacher_input.interpolation unknown',
         lambda f: _distilled(teacher=_teacher(), teacher_input=dict(interpolation='lanczos')),
         ValueError, r"teacher_input\.interpolation must be one of \('nearest', 'bilinear', "
         r"'bicubic', 'area'\), got 'lanczos'"),
    Case('teacher_input.size not divisible by a ViT teacher\'s patch size',
         lambda f: _distilled(teacher=dict(
             type='ImageClassifier',
             backbone=dict(type='VisionTransformer', arch=TINY_ARCH, img_size=32, patch_size=8),
             head=dict(type='VisionTransformerClsHead', num_classes=NUM_CLASSES, in_channels=32)),
             teacher_input=dict(size=(36, 36))), ValueError,
         r"teacher_input\.size \(36, 36\) is not divisible by the patch size \(8, 8\) of the "
         r"teacher's backbone\.patch_embed"),
    Case('TeacherCheckHook max_batches zero', lambda f: TeacherCheckHook(max_batches=0),
         ValueError, r'max_batches must be a positive int or None, got 0'),
    Case('TeacherCheckHook min_accuracy above 100', lambda f: TeacherCheckHook(min_accuracy=101),
         ValueError, r'min_accuracy must be a number in \[0, 100\] \(%\) or None, got 101'),
    # --- checkpoints
    Case('checkpoint with missing keys', lambda f: init_model(f.config, f.ckpt_missing),
         RuntimeError, r'missing keys in source state_dict: backbone\.pos_embed'),
    Case('checkpoint with unexpected keys', lambda f: init_model(f.config, f.ckpt_unexpected),
         RuntimeError, r'unexpected key in source state_dict: head\.foo\.bar'),
    Case('checkpoint truncated', lambda f: init_model(f.config, f.ckpt_truncated), RuntimeError,
         r'Could not read checkpoint .*cut\.pth: it is truncated or not a torch checkpoint'),
    Case('checkpoint that would run code', lambda f: init_model(f.config, f.ckpt_code),
         UnsafeCheckpointError, r"Refused to load checkpoint .*evil\.pth.*allow-list"),
    Case('checkpoint file missing', lambda f: init_model(f.config, str(f.root / 'nope.pth')),
         FileNotFoundError, r'checkpoint .*nope\.pth does not exist'),
    # --- images at inference
    Case('grey image array', lambda f: inference_model(f.model, np.zeros((32, 32), np.uint8)),
         ValueError, r'img must be an \(H, W, 3\) array .*got shape \(32, 32\).*gray2bgr'),
    Case('RGBA image array', lambda f: inference_model(f.model, np.zeros((32, 32, 4), np.uint8)),
         ValueError, r'img must be an \(H, W, 3\) array .*got shape \(32, 32, 4\)'),
    Case('2-channel image array',
         lambda f: inference_model(f.model, np.zeros((32, 32, 2), np.uint8)), ValueError,
         r'img must be an \(H, W, 3\) array .*got shape \(32, 32, 2\)'),
    Case('float image array',
         lambda f: inference_model(f.model, np.zeros((32, 32, 3), np.float32)), ValueError,
         r'img must be uint8, got float32'),
    Case('truncated image file', lambda f: inference_model(f.model, f.image_truncated),
         ValueError, r'cannot read image .*cut\.png'),
    Case('corrupt image file', lambda f: inference_model(f.model, f.image_junk), ValueError,
         r'cannot read image .*junk\.jpg'),
    Case('image file missing', lambda f: inference_model(f.model, str(f.root / 'nope.png')),
         FileNotFoundError, r'image .*nope\.png does not exist'),
    # --- datasets
    Case('corrupt image file in a training pipeline',
         lambda f: LoadImageFromFile()(dict(img_path=f.image_junk)), AssertionError,
         r'failed to load image: .*junk\.jpg'),
    Case('empty image folder, CustomDataset',
         lambda f: DATASETS.build(dict(type='CustomDataset', data_root=f.empty_folder)),
         RuntimeError, r'Found 0 files in subfolders of: .*empty.*Supported extensions are: '),
    Case('empty image folder, checked before training',
         lambda f: check_data_roots(_train_cfg(f.empty_folder)), FileNotFoundError,
         r"train_dataloader\.dataset: image folder '.*empty' holds no image \(looked for "
         r'.*empty/<class>/<image> with extensions .*\.png'),
    Case('images not in class folders', lambda f: check_data_roots(_train_cfg(f.flat_folder)),
         FileNotFoundError, r"image folder '.*flat' holds no image \(looked for .*<class>/<image>"),
    Case('no image with the given extensions',
         lambda f: check_data_roots(_train_cfg(f.images, extensions=('.jpg',))),
         FileNotFoundError, r"holds no image .* with extensions \('\.jpg',\)"),
    Case('data_root missing', lambda f: check_data_roots(_train_cfg(f.root / 'nope')),
         FileNotFoundError, r"train_dataloader\.dataset: data_root '.*nope' does not exist"),
]  # fmt: skip


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    return Files(tmp_path_factory.mktemp('bad_inputs'))


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_error(case, files):
    with pytest.raises(Exception) as excinfo:
        case.run(files)
    assert excinfo.type is case.error, f'{excinfo.type.__name__}: {excinfo.value}'
    assert excinfo.match(case.match)


def test_good_inputs_next_to_the_bad_ones_pass(files):
    """The same builders and files without the mistake: the cases fail for the reason named."""
    assert len(_vit(out_indices=(0, 3), frozen_stages=4)(torch.rand(1, 3, 32, 32))) == 2
    tokens = _vit()(torch.rand(2, 3, 32, 32))[-1]  # (cls_token, dist_token)
    head = DeiTClsHead(num_classes=2, in_channels=32)
    assert head((tokens,)).shape == head(((torch.rand(2, 32), *tokens),)).shape == (2, 2)
    init_model(files.config, files.ckpt)
    grey = files.root / 'grey.png'
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(grey)  # grey and RGBA files: converted
    rgba = files.root / 'rgba.png'
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(rgba)
    assert len(inference_model(files.model, [str(grey), str(rgba)])) == 2
    check_data_roots(_train_cfg(files.images))
    assert len(DATASETS.build(dict(type='CustomDataset', data_root=str(files.images)))) == 2
