"""The user's side of the journeys: their own folder, their data, their teacher, the CLI.

Every journey runs in a temporary folder outside the checkout, with the checkout's tools as
subprocesses (``python <checkout>/tools/train.py my_config.py``), on a config the user writes
there that inherits a shipped one through ``_base_ = 'mmdeit::...'``. Nothing here is imported
by the tools: what they see is what a user's shell gives them.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / 'configs'
TOOLS = REPO / 'tools'
WNIDS = ('n01440764', 'n01443537')  # the first two ImageNet-1k classes (tench, goldfish)


def shipped_configs() -> List[str]:
    """Every config under configs/ (relative paths), ``_base_`` folders left out."""
    found = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob('*.py'))
    return [c for c in found if '_base_' not in Path(c).parts]


def run_cli(
    args: Sequence[str], cwd: Path, log_name: str, timeout: int = 600, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in ``cwd`` as a user's shell would; the whole output goes to a log.

    The environment is the test process's, less anything that would put the checkout on the
    import path, with one thread for torch (the journeys run two processes at a time on two
    cores). On an unexpected exit status the assertion shows the end of the output.
    """
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTEST_CURRENT_TEST')}
    env.update(PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    (cwd / f'{log_name}.log').write_text(proc.stdout)
    if expect_ok:
        assert proc.returncode == 0, (
            f'{" ".join(map(str, args))} exited {proc.returncode} in {cwd}:\n' + proc.stdout[-6000:]
        )
    return proc


def tool(name: str) -> str:
    return str(TOOLS / name)


def write_imagenet(root: Path, size=(72, 80)) -> Path:
    """``root/{train/<wnid>/*.JPEG, val/*.JPEG, meta/{train,val}.txt}``: 2 classes x 2 + 2."""
    rng = np.random.default_rng(0)
    (root / 'meta').mkdir(parents=True)
    (root / 'val').mkdir()
    train_lines, val_lines = [], []
    for label, wnid in enumerate(WNIDS):
        (root / 'train' / wnid).mkdir(parents=True)
        for i in range(2):
            name = f'{wnid}/{wnid}_{i}.JPEG'
            img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / 'train' / name, format='JPEG')
            train_lines.append(f'{name} {label}')
        name = f'ILSVRC2012_val_{label:08d}.JPEG'
        img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / 'val' / name, format='JPEG')
        val_lines.append(f'{name} {label}')
    (root / 'meta' / 'train.txt').write_text('\n'.join(train_lines) + '\n')
    (root / 'meta' / 'val.txt').write_text('\n'.join(val_lines) + '\n')
    return root


def write_class_folders(
    root: Path, classes=('cat', 'dog'), per_split=(('train', 2), ('val', 1)), size=(72, 80)
) -> Path:
    """mmpretrain's ``CustomDataset`` layout: ``root/<split>/<class>/<class>_<i>.jpg``."""
    rng = np.random.default_rng(0)
    for split, count in per_split:
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / name / f'{name}_{i}.jpg')
    return root


@pytest.fixture(scope='session')
def user_home(tmp_path_factory) -> Path:
    """The user's own folder, outside the checkout, with ``data/imagenet`` in it."""
    home = tmp_path_factory.mktemp('user')
    assert REPO not in home.parents
    write_imagenet(home / 'data' / 'imagenet')
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 120, 3), np.uint8)).save(
        home / 'photo.jpg'
    )
    return home


@pytest.fixture(scope='session')
def imagenet_teacher(user_home) -> dict:
    """The user's own small ImageNet teacher: timm's resnet10t and a local checkpoint."""
    from mmpretrain.models import TimmClassifier

    torch.manual_seed(0)
    teacher = TimmClassifier(model_name='resnet10t', num_classes=1000, pretrained=False)
    path = user_home / 'checkpoints' / 'resnet10t_teacher.pth'
    path.parent.mkdir(exist_ok=True)
    torch.save({'state_dict': teacher.state_dict()}, path)
    return dict(
        teacher=dict(
            type='TimmClassifier', model_name='resnet10t', num_classes=1000, pretrained=False
        ),
        teacher_ckpt=str(path),
    )


@pytest.fixture(scope='session')
def digits_teacher(user_home) -> dict:
    """A digits teacher built from the shipped teacher config, saved as the user would."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdeit.registry import MODELS

    cfg = Config.fromfile(str(CONFIGS / 'digits' / 'resnet-digits_1xb64_digits.py'))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdeit'):
        teacher = MODELS.build(cfg.model)
    path = user_home / 'checkpoints' / 'digits_teacher.pth'
    path.parent.mkdir(exist_ok=True)
    torch.save({'state_dict': teacher.state_dict()}, path)
    return dict(teacher_ckpt=str(path))


def user_config(folder: Path, base: str, body: str = '', name: Optional[str] = None) -> Path:
    """Write the user's config: ``_base_ = 'mmdeit::BASE'`` and their changes."""
    path = folder / (name or f'my_{Path(base).stem}.py')
    path.write_text(f"_base_ = 'mmdeit::{base}'\n{body}")
    return path


def readme_blocks() -> List[dict]:
    """The README's fenced code blocks: ``section`` (its ``##`` heading), ``lang``, ``code``."""
    blocks, section, lang, code = [], '', None, []
    for line in (REPO / 'README.md').read_text().splitlines():
        if lang is None and line.startswith('## '):
            section = line[3:].strip()
        elif lang is None and line.startswith('```'):
            lang, code = line[3:].strip() or 'text', []
        elif lang is not None and line.startswith('```'):
            blocks.append(dict(section=section, lang=lang, code='\n'.join(code) + '\n'))
            lang = None
        elif lang is not None:
            code.append(line)
    return blocks


def shell_commands(code: str) -> List[List[str]]:
    """The commands of a bash block, split into words, trailing ``# comments`` dropped."""
    import shlex

    return [shlex.split(line, comments=True) for line in code.splitlines() if line.strip()]


def write_digit_png(path: Path) -> Path:
    """One of scikit-learn's 8x8 digits as a grey PNG, as a user would have it."""
    from sklearn.datasets import load_digits

    digit = load_digits().images[3]  # a '3'
    Image.fromarray((digit * (255 / 16)).astype(np.uint8)).save(path)
    return path


def run_two_at_a_time(jobs: dict) -> dict:
    """Run ``{name: callable}`` two at a time; ``{name: None or the exception it raised}``.

    A journey's subprocess spends most of its time in ``import mmdeit`` (torch, mmengine,
    mmpretrain and, when installed, mmdet), which keeps one core busy: the 2-core machine runs
    two of them in the time of one. Each test then raises its own job's exception.
    """
    from concurrent.futures import ThreadPoolExecutor

    outcomes = {}

    def run(name):
        try:
            jobs[name]()
            outcomes[name] = None
        except BaseException as err:  # reported by the job's own test
            outcomes[name] = err

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(run, jobs))
    return outcomes
