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

The mmdet/mmseg configs are built only (marker ``build_only``): their models are built from the
user's config by mmdet's / mmseg's registries here, and trained for a step in
``tests/downstream``.
"""

import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from .conftest import CONFIGS, run_cli, shipped_configs, tool, user_config

pytestmark = pytest.mark.journey

#: What each shipped config's training journey produced (config -> checkpoint), so that a
#: fine-tuning config starts from the checkpoint its base recipe really wrote.
TRAINED = {}

RUN_SHORT = """
# One epoch of my small data, in the training process (2 cores, no worker processes).
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
"""
NO_WORKERS = """{loader} = dict(num_workers=0, persistent_workers=False{extra})
"""


def _dataset_type(cfg: Config) -> str:
    dataset = cfg.train_dataloader.dataset
    while 'dataset' in dataset:  # dataset wrappers
        dataset = dataset.dataset
    return dataset.type


def _needs_teacher(cfg: Config) -> bool:
    return 'teacher' in cfg.model and cfg.model.head.loss.get('mode', 'none') != 'none'


def _pretrained_init(cfg: Config) -> dict:
    """The model's ``Pretrained`` init (the last of its list), or an empty dict."""
    init_cfg = cfg.model.get('init_cfg') or []
    init_cfg = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    found = [c for c in init_cfg if c.get('type') == 'Pretrained']
    assert not found or found[-1] is init_cfg[-1], 'the Pretrained init should come last'
    return found[-1] if found else {}


def _pretrained_checkpoint(cfg: Config, tmp_dir: Path) -> str:
    """The checkpoint a fine-tuning config starts from: the one its 224 recipe's journey
    wrote, or (when that journey did not run in this session) one of the same model."""
    named = _pretrained_init(cfg)['checkpoint']  # work_dirs/<recipe>/epoch_300.pth
    recipe = f'deit/{Path(named).parent.name}.py'
    if recipe in TRAINED:
        return TRAINED[recipe]
    from mmdeit.apis import init_model

    model = init_model(str(CONFIGS / recipe))
    path = tmp_dir / 'pretrained_224.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def _user_body(config: str, cfg: Config, home: Path, tmp_dir: Path, teachers: dict) -> str:
    """What the user writes below ``_base_`` for this config's journey."""
    dataset_type = _dataset_type(cfg)
    body, model = RUN_SHORT, []  # model: the user's changes to the model, ``key=value``
    if dataset_type == 'ImageNet':  # the generated folder is at ./data/imagenet, as expected
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            body += NO_WORKERS.format(loader=loader, extra='')
        if _needs_teacher(cfg):
            t = teachers['imagenet']  # my own teacher, with a checkpoint I have here
            model += [f'teacher=dict(_delete_=True, **{t["teacher"]!r})',
                      f'teacher_ckpt={t["teacher_ckpt"]!r}']  # fmt: skip
    elif dataset_type == 'DigitsDataset':  # ships with scikit-learn; one batch of it
        body += NO_WORKERS.format(loader='train_dataloader', extra=', dataset=dict(indices=64)')
        body += NO_WORKERS.format(loader='val_dataloader', extra=', dataset=dict(indices=120)')
        body += NO_WORKERS.format(loader='test_dataloader', extra=', dataset=dict(indices=120)')
        if _needs_teacher(cfg):
            model.append(f'teacher_ckpt={teachers["digits"]["teacher_ckpt"]!r}')
    else:
        pytest.fail(
            f'{config}: no journey data for dataset type {dataset_type!r}; '
            'add a generator for it in tests/journeys'
        )
    if _pretrained_init(cfg):
        checkpoint = _pretrained_checkpoint(cfg, tmp_dir)  # my 224 run's checkpoint
        inits = [c.to_dict() for c in cfg.model.init_cfg]
        inits[-1]['checkpoint'] = checkpoint
        model.append(f'init_cfg={inits!r}')
    if model:
        body += f'model = dict({", ".join(model)})\n'
    return body


TRAINING = [c for c in shipped_configs() if not c.startswith('downstream/')]
DOWNSTREAM = [c for c in shipped_configs() if c.startswith('downstream/')]


def test_every_config_is_in_a_journey():
    assert len(TRAINING) >= 12 and len(DOWNSTREAM) == 2, shipped_configs()


@pytest.mark.parametrize('config', TRAINING)
def test_train_test_infer_from_my_folder(
    config, user_home, imagenet_teacher, digits_teacher, tmp_path
):
    cfg = Config.fromfile(str(CONFIGS / config))
    teachers = dict(imagenet=imagenet_teacher, digits=digits_teacher)
    body = _user_body(config, cfg, user_home, tmp_path, teachers)
    folder = user_home  # the data is there; each journey writes its own config and work dir
    name = Path(config).stem
    my_cfg = user_config(folder, config, body)
    work_dir = folder / 'work_dirs' / name

    # 1. train
    out = run_cli(
        [tool('train.py'), my_cfg.name, '--work-dir', work_dir], folder, f'train_{name}'
    ).stdout
    assert 'Epoch(train) [1][1/1]' in out, out[-3000:]
    ckpt_path = work_dir / 'epoch_1.pth'
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 1
    state = ckpt['state_dict']
    assert not any(k.startswith('teacher') for k in state)
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    if _needs_teacher(cfg):
        assert 'loss_distill' in out and 'Loaded the teacher from' in out
    TRAINED[config] = str(ckpt_path)

    # 2. test the student, with no teacher checkpoint anywhere
    options = []
    if 'teacher' in cfg.model:
        options = ['--cfg-options', f'model.teacher_ckpt={folder}/no/such/teacher.pth']
    out = run_cli(
        [tool('test.py'), my_cfg.name, ckpt_path, '--work-dir', folder / 'test_dirs' / name,
         *options],
        folder,
        f'test_{name}',
    ).stdout  # fmt: skip
    assert re.search(r'Epoch\(test\) \[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    assert 'Loaded the teacher' not in out

    # 3. infer: init_model + inference_model through tools/infer.py
    out = run_cli(
        [tool('infer.py'), 'photo.jpg', my_cfg.name, ckpt_path], folder, f'infer_{name}'
    ).stdout
    top = re.findall(r'^1\. (.+?)\s+([01]\.\d{4})\s+\(class (\d+)\)$', out, re.M)
    assert top, out[-3000:]
    classes = ckpt['meta']['dataset_meta']['classes']
    assert top[0][0] == classes[int(top[0][2])]


BUILD_DOWNSTREAM = """
import sys
from mmengine.config import Config
from mmengine.registry import init_default_scope
import mmdeit  # noqa: F401  (mmdeit:: bases, mmdeit.* types)

cfg = Config.fromfile(sys.argv[1])
init_default_scope(cfg.default_scope)
if cfg.default_scope == 'mmdet':
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
else:
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
register_all_modules(init_default_scope=False)
model = MODELS.build(cfg.model)
print(type(model).__name__, type(model.backbone).__module__, type(model.neck).__name__,
      sum(p.numel() for p in model.parameters()))
"""


@pytest.mark.build_only
@pytest.mark.parametrize('config', DOWNSTREAM)
def test_downstream_config_builds_from_my_folder(config, user_home, tmp_path):
    pytest.importorskip('mmdet' if '/mmdet/' in config else 'mmseg')
    my_cfg = user_config(tmp_path, config)
    script = tmp_path / 'build_model.py'
    script.write_text(BUILD_DOWNSTREAM)
    out = run_cli([script, my_cfg], tmp_path, 'build').stdout
    model, backbone, neck, _ = out.strip().splitlines()[-1].split()
    assert model == ('MaskRCNN' if '/mmdet/' in config else 'EncoderDecoder'), out[-2000:]
    assert backbone == 'mmdeit.models.backbones.distilled_vision_transformer'
    assert neck in ('SimpleFPN', 'MultiLevelNeck')
