"""Every shipped config, as a user runs it: their folder, their config, the CLI.

For each config under ``configs/`` (found by listing the folder, so a new config is covered
without editing this file) the user writes ``my_<name>.py`` in a folder of their own that
inherits it through ``_base_ = 'mmdeit::...'`` and changes only what a user with a small
machine and their own data changes (workers, one epoch, their teacher), then runs, each as a
subprocess from that folder:

1. ``tools/train.py my_config.py`` for one iteration on generated data in the layout the config
   expects (an ImageNet folder under ``data/imagenet``, or the digits that ship with
   scikit-learn);
2. ``tools/test.py my_config.py work_dirs/.../epoch_1.pth`` with the teacher's checkpoint
   *absent* (evaluating a student needs only the student);
3. ``tools/infer.py photo.jpg my_config.py epoch_1.pth`` (``init_model`` + ``inference_model``).

Built only (marker ``build_only``), to keep the suite within its 15 minutes on 2 cores: the
heaviest configs (the DeiT-B ones: a training journey costs about two minutes each here, mostly
writing and reading 1.4 GB checkpoints) and the mmdet/mmseg ones (COCO / ADE20K layouts; their
models take a training step in ``tests/downstream``); and the GPU-only ones (mmengine's
``AmpOptimWrapper``, the ImageNet SimMIM recipe: the same model and algorithm train here in the
digits SimMIM journey and in ``tests/models/selfsup``). Their models are built, in one
subprocess, from the user's config by the registry of the config's scope. The DeiT-B recipes
differ from the DeiT-S/Ti ones that do run only in ``arch``; the 384 fine-tunes' start from the
224 checkpoint is tested in ``tests/configs/test_finetune_configs.py``.

Self-supervised configs (no ``val_evaluator``: SimMIM pretraining) stop after step 1: they have
no labels to validate, test or classify with.
"""

import copy
import functools
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from .conftest import (
    CONFIGS,
    run_cli,
    run_two_at_a_time,
    shipped_configs,
    tool,
    user_config,
    write_class_folders,
)

pytestmark = pytest.mark.journey

RUN_SHORT = """
# One epoch of my small data, in the training process (2 cores, no worker processes).
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
"""
NO_WORKERS = """{loader} = dict(num_workers=0, persistent_workers=False{extra})
"""
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _dataset_type(cfg: Config) -> str:
    dataset = cfg.train_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset.dataset
    return dataset.type


def _needs_teacher(cfg: Config) -> bool:
    return 'teacher' in cfg.model and cfg.model.head.loss.get('mode', 'none') != 'none'


def _per_head(cfg: Config) -> bool:
    """Whether validation reports per_head/*: a DeiTClsHead with mmdeit's Accuracy (or with
    PerHeadAccuracy)."""
    evaluators = cfg.val_evaluator if isinstance(cfg.val_evaluator, list) else [cfg.val_evaluator]
    if cfg.model.get('head', {}).get('type') != 'DeiTClsHead':
        return False
    deit_accuracy = ('Accuracy', 'DeiTAccuracy', 'mmdeit.Accuracy', 'mmdeit.DeiTAccuracy')
    return any(
        e.get('type') == 'PerHeadAccuracy'
        or (e.get('type') in deit_accuracy and e.get('per_head', True))
        for e in evaluators
    )


def _selfsup(cfg: Config) -> bool:
    return cfg.get('val_evaluator') is None


@functools.cache
def _shipped(config: str) -> Config:
    """The shipped config, parsed once for the module's read-only classifications below."""
    return Config.fromfile(str(CONFIGS / config))


def _selfsup_config(config: str) -> bool:
    return _selfsup(_shipped(config))


def _pretrained_init(cfg: Config) -> dict:
    """The model's ``Pretrained`` init (the last of its list), or an empty dict."""
    init_cfg = cfg.model.get('init_cfg') or []
    init_cfg = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    found = [c for c in init_cfg if c.get('type') == 'Pretrained']
    assert not found or found[-1] is init_cfg[-1], 'the Pretrained init should come last'
    return found[-1] if found else {}


def _pretrained_checkpoint(cfg: Config, tmp_dir: Path) -> str:
    """The user's checkpoint that a fine-tuning config starts from, made here: of the recipe
    it names (``work_dirs/<recipe>/epoch_300.pth``), or else (a converted checkpoint) of the
    config's own model."""
    from mmdeit.apis import init_model

    named = Path(_pretrained_init(cfg)['checkpoint'])
    recipe = CONFIGS / 'deit' / f'{named.parent.name}.py'
    if recipe.is_file():
        source = str(recipe)
    else:
        source = copy.deepcopy(cfg)
        source.model.init_cfg = None  # not the file it names, which is made here
    path = tmp_dir / f'{Path(cfg.filename).stem}_pretrained.pth'  # one per journey
    torch.save({'state_dict': init_model(source).state_dict()}, path)
    return str(path)


def _user_body(
    config: str, cfg: Config, home: Path, tmp_dir: Path, teachers: dict, pretrained: bool = True
) -> str:
    """What the user writes below ``_base_`` for this config's journey."""
    dataset_type = _dataset_type(cfg)
    body, model = RUN_SHORT, []  # model: the user's changes to the model, ``key=value``
    loaders = ('train_dataloader',) if _selfsup(cfg) else LOADERS
    if dataset_type == 'ImageNet':  # the generated folder is at ./data/imagenet, as expected
        for loader in loaders:
            body += NO_WORKERS.format(loader=loader, extra='')
        if _needs_teacher(cfg):
            t = teachers['imagenet']  # my own teacher, with a checkpoint I have here
            model += [f'teacher=dict(_delete_=True, **{t["teacher"]!r})',
                      f'teacher_ckpt={t["teacher_ckpt"]!r}']  # fmt: skip
    elif dataset_type in ('DigitsDataset', 'ClutteredDigitsDataset'):  # from scikit-learn's
        for loader in loaders:
            indices = 64 if loader == 'train_dataloader' else 120
            body += NO_WORKERS.format(loader=loader, extra=f', dataset=dict(indices={indices})')
        if _needs_teacher(cfg):
            model.append(f'teacher_ckpt={teachers["digits"]["teacher_ckpt"]!r}')
    elif dataset_type == 'CustomDataset':  # my class folders under ./data/custom
        if not (home / 'data' / 'custom').exists():  # as many class folders as the head has
            classes = [f'class{i}' for i in range(cfg.model.head.num_classes)]
            write_class_folders(home / 'data' / 'custom', classes)
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            body += NO_WORKERS.format(loader=loader, extra='')
        if _needs_teacher(cfg):  # my own teacher on my classes (the recipe's class count)
            from mmpretrain.models import TimmClassifier

            t = dict(type='TimmClassifier', model_name='resnet10t', pretrained=False,
                     num_classes=cfg.model.head.num_classes)  # fmt: skip
            path = tmp_dir / f'{Path(config).stem}_teacher.pth'
            kwargs = {k: v for k, v in t.items() if k != 'type'}
            torch.save({'state_dict': TimmClassifier(**kwargs).state_dict()}, path)
            model += [f'teacher=dict(_delete_=True, **{t!r})', f'teacher_ckpt={str(path)!r}']
    else:
        pytest.fail(
            f'{config}: no journey data for dataset type {dataset_type!r}; '
            'add a generator for it in tests/journeys'
        )
    if pretrained and _pretrained_init(cfg):
        checkpoint = _pretrained_checkpoint(cfg, tmp_dir)  # my earlier run's / converted
        inits = [c.to_dict() for c in cfg.model.init_cfg]
        inits[-1]['checkpoint'] = checkpoint
        model.append(f'init_cfg={inits!r}')
    if model:
        body += f'model = dict({", ".join(model)})\n'
    return body


def _heaviest(config: str) -> bool:
    return _shipped(config).model.backbone.get('arch') == 'deit-base'


def _gpu_only(config: str) -> bool:
    return _shipped(config).optim_wrapper.get('type') == 'AmpOptimWrapper'


DOWNSTREAM = [c for c in shipped_configs() if c.startswith('downstream/')]
BUILD_ONLY = [c for c in shipped_configs() if c in DOWNSTREAM or _heaviest(c) or _gpu_only(c)]
TRAINING = [c for c in shipped_configs() if c not in BUILD_ONLY]


def _evaluation_path(config: str) -> tuple:
    """What tools/test.py and tools/infer.py build and read for ``config``: the student's
    classifier, backbone and head types and the dataset type."""
    from mmdeit.models.classifiers import student_model_cfg

    cfg = _shipped(config)
    student = student_model_cfg(cfg.model)
    return student['type'], student['backbone']['type'], student['head']['type'], _dataset_type(cfg)


def _evaluated(configs: list) -> list:
    """The first config (in order) of each evaluation path: every config trains through the
    CLI; test.py and infer.py run once per path (a child that differs from its parent only in
    training settings, e.g. loss mode, init or arch size, tests and infers the same way)."""
    first = {}
    for config in configs:
        if _selfsup_config(config):
            continue
        first.setdefault(_evaluation_path(config), config)
    return sorted(first.values())


EVALUATED = _evaluated(TRAINING)


def _journey(config: str, home: Path, teachers: dict, tmp_dir: Path) -> None:
    """Train, test and infer with ``config`` as the user does; raises on any failure."""
    cfg = Config.fromfile(str(CONFIGS / config))
    body = _user_body(config, cfg, home, tmp_dir, teachers)
    name = Path(config).stem
    my_cfg = user_config(home, config, body)  # the data is in home; one config per journey
    work_dir = home / 'work_dirs' / name

    # 1. train
    out = run_cli([tool('train.py'), my_cfg.name, '--work-dir', work_dir], home, f'train_{name}')
    out = out.stdout
    assert 'Epoch(train) [1][1/1]' in out, out[-3000:]
    ckpt_path = work_dir / 'epoch_1.pth'
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 1
    assert not any(k.startswith('teacher') for k in ckpt['state_dict'])
    if _selfsup(cfg):  # pretraining: nothing to validate, test or classify
        assert re.search(r'Epoch\(train\) \[1\]\[1/1\].*loss: \d+\.\d+', out), out[-3000:]
        return
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    if _needs_teacher(cfg):
        assert 'loss_distill' in out and 'Loaded the teacher from' in out
    per_head = _per_head(cfg)
    if per_head:  # each head's top-1 and, with a teacher, its top-1 and agreement
        assert re.search(r'Epoch\(val\).*per_head/cls_top1: [\d.]+.*per_head/fused_top1', out)
        assert ('per_head/teacher_agreement' in out) == _needs_teacher(cfg), out[-3000:]
    if any(h.type == 'EMAHook' for h in cfg.get('custom_hooks', [])):
        assert 'ema_state_dict' in ckpt
    groups = ckpt['optimizer']['param_groups']
    if cfg.optim_wrapper.optimizer.get('fused'):
        assert all(g['fused'] for g in groups)
    if cfg.optim_wrapper.get('paramwise_cfg', {}).get('norm_decay_mult') == 0:
        decay = cfg.optim_wrapper.optimizer.weight_decay
        assert {g['weight_decay'] for g in groups} == {0.0, decay}  # none on norms, tokens
    if _pretrained_init(cfg):
        assert 'load model from' in out and 'size mismatch' not in out
    if config not in EVALUATED:  # its test and inference path is another config's
        return

    # 2. test the student, with no teacher checkpoint anywhere
    options = []
    if 'teacher' in cfg.model:
        options = ['--cfg-options', f'model.teacher_ckpt={home}/no/such/teacher.pth']
    out = run_cli(
        [tool('test.py'), my_cfg.name, ckpt_path, '--work-dir', home / 'test_dirs' / name,
         *options],
        home,
        f'test_{name}',
    ).stdout  # fmt: skip
    assert re.search(r'Epoch\(test\) \[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    assert 'Loaded the teacher' not in out
    if per_head:  # the student's heads only: test.py builds no teacher
        assert 'per_head/dist_top1' in out and 'per_head/teacher_top1' not in out

    # 3. infer: init_model + inference_model through tools/infer.py
    out = run_cli([tool('infer.py'), 'photo.jpg', my_cfg.name, ckpt_path], home, f'infer_{name}')
    out = out.stdout
    top = re.findall(r'^1\. (.+?)\s+([01]\.\d{4})\s+\(class (\d+)\)$', out, re.M)
    assert top, out[-3000:]
    classes = ckpt['meta']['dataset_meta']['classes']
    assert top[0][0] == classes[int(top[0][2])]


@pytest.fixture(scope='session')
def journeys(user_home, imagenet_teacher, digits_teacher, tmp_path_factory) -> dict:
    """config -> None, or the exception its journey raised (run two at a time)."""
    teachers = dict(imagenet=imagenet_teacher, digits=digits_teacher)
    tmp = tmp_path_factory.mktemp('journeys')
    return run_two_at_a_time(
        {c: functools.partial(_journey, c, user_home, teachers, tmp) for c in TRAINING}
    )


def test_every_config_is_in_a_journey():
    assert sorted(TRAINING + BUILD_ONLY) == shipped_configs()
    assert len(TRAINING) >= 8 and len(BUILD_ONLY) == 7, BUILD_ONLY
    # test.py and infer.py run on every evaluation path: ImageNet plain and distilled DeiT, the
    # digits and cluttered digits students and teachers, the custom-dataset student
    assert len(EVALUATED) == 7, EVALUATED
    assert {_evaluation_path(c) for c in EVALUATED} == {
        _evaluation_path(c) for c in TRAINING if not _selfsup_config(c)
    }


@pytest.mark.parametrize('config', TRAINING)
def test_train_test_infer_from_my_folder(config, journeys):
    if journeys[config] is not None:
        raise journeys[config]


BUILD_MODELS = """
import sys
from mmengine.config import Config
from mmengine.registry import init_default_scope
import mmdeit  # noqa: F401  (mmdeit:: bases, mmdeit.* types)

for name in sys.argv[1:]:
    cfg = Config.fromfile(name)
    scope = cfg.default_scope
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    else:
        from mmdeit.registry import MODELS
    model = MODELS.build(cfg.model)
    print('built', name, type(model).__name__, type(model.backbone).__module__,
          type(model.neck).__name__, sum(p.numel() for p in model.parameters()))
"""


@pytest.fixture(scope='session')
def built(user_home, imagenet_teacher, digits_teacher, tmp_path_factory) -> dict:
    """user config file name -> the words of its 'built' line, from one subprocess."""
    folder = tmp_path_factory.mktemp('build_only')
    teachers = dict(imagenet=imagenet_teacher, digits=digits_teacher)
    names = []
    for config in BUILD_ONLY:
        body = ''
        if not config.startswith('downstream/'):
            cfg = Config.fromfile(str(CONFIGS / config))
            body = _user_body(config, cfg, user_home, folder, teachers, pretrained=False)
        names.append(user_config(folder, config, body).name)
    script = folder / 'build_models.py'
    script.write_text(BUILD_MODELS)
    out = run_cli([script, *names], folder, 'build').stdout
    lines = [line.split() for line in out.splitlines() if line.startswith('built ')]
    return {words[1]: words[2:] for words in lines}


@pytest.mark.build_only
@pytest.mark.parametrize('config', BUILD_ONLY)
def test_config_builds_from_my_folder(config, built):
    pytest.importorskip({'mmdet': 'mmdet', 'mmseg': 'mmseg'}.get(config.split('/')[1], 'mmdeit'))
    model, backbone, neck, params = built[f'my_{Path(config).stem}.py']
    if config.startswith('simmim/'):  # DeiT-S, GPU-only (AmpOptimWrapper)
        assert (model, neck) == ('DeiTSimMIM', 'SimMIMLinearDecoder')
        assert backbone == 'mmdeit.models.backbones.masked_vision_transformer'
        assert 21_000_000 < int(params) < 23_000_000
        return
    assert backbone == 'mmdeit.models.backbones.distilled_vision_transformer' or (
        backbone == 'mmdeit.models.backbones.vision_transformer' and 'distilled' not in config
    )
    if '/mmdet/' in config:
        assert (model, neck) == ('MaskRCNN', 'SimpleFPN')
    elif '/mmseg/' in config:
        assert (model, neck) == ('EncoderDecoder', 'MultiLevelNeck')
    else:
        distilled = 'distilled' in config
        assert model == ('DistilledImageClassifier' if distilled else 'ImageClassifier')
        assert int(params) > 85_000_000  # DeiT-B
