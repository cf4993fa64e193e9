"""Config and checkpoint arguments: ``PACKAGE::`` names resolved, wrong ones refused by name.

In-process checks of ``mmdeit.apis.config_file``, then the tools as a user runs them from a
folder outside the checkout: a shipped config named ``mmdeit::...``, and CONFIG and CHECKPOINT
given the wrong way round.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmdeit.apis import checkpoint_path, config_path, init_model, load_config
from tests.journeys.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
DIGITS = 'digits/deit-digits-tiny_1xb64_digits.py'
DISTILLED = 'deit/deit-tiny-distilled_8xb128_in1k.py'


@pytest.mark.parametrize('name', [DIGITS, DISTILLED])
def test_a_package_config_resolves_to_the_shipped_file(name):
    path = config_path(f'mmdeit::{name}')
    assert Path(path).resolve() == (REPO / 'configs' / name).resolve()
    assert load_config(f'mmdeit::{name}').model == Config.fromfile(REPO / 'configs' / name).model


def test_init_model_takes_a_package_config():
    model = init_model(f'mmdeit::{DIGITS}')
    assert type(model.backbone).__name__.endswith('VisionTransformer')
    assert Path(model.cfg.filename).resolve() == (REPO / 'configs' / DIGITS).resolve()


@pytest.mark.parametrize(
    'config, error, match',
    [
        ('mmdeit::deit/nope.py', FileNotFoundError, r'config mmdeit::deit/nope\.py does not exist'),
        ('nopkg::deit/x.py', ValueError, r"config 'nopkg::deit/x\.py'"),
        ('nowhere.py', FileNotFoundError, r'config nowhere\.py does not exist'),
    ],
)
def test_a_missing_config_is_named(config, error, match):
    with pytest.raises(error, match=match):
        config_path(config)


def test_a_checkpoint_given_as_the_config_is_refused(tmp_path):
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {}}, ckpt)
    with pytest.raises(ValueError, match=r'config .*epoch_1\.pth is not a config file.*swapped'):
        load_config(ckpt)
    with pytest.raises(ValueError, match=r'config .*epoch_1\.pth is not a config file'):
        init_model(str(ckpt), str(REPO / 'configs' / DIGITS))


def test_a_config_given_as_the_checkpoint_is_refused(tmp_path):
    config = str(REPO / 'configs' / DIGITS)
    with pytest.raises(ValueError, match=r'checkpoint .*\.py is a config file.*swapped'):
        checkpoint_path(config)
    with pytest.raises(FileNotFoundError, match=r'checkpoint .*nope\.pth does not exist'):
        checkpoint_path(tmp_path / 'nope.pth')
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {}}, ckpt)
    assert checkpoint_path(ckpt) == str(ckpt)


def test_load_config_passes_a_config_through_and_refuses_other_types():
    cfg = Config(dict(a=1))
    assert load_config(cfg) is cfg
    with pytest.raises(TypeError, match='config must be a path or a Config, got int'):
        load_config(3)


# ---------------------------------------------------------------- as a user runs the tools
def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m mmdeit ARGS`` in ``cwd`` as a user's shell runs it (the journeys' runner)."""
    return run_cli(['-m', 'mmdeit', *args], cwd, f'mmdeit_{args[0]}', timeout=300, expect_ok=False)


@pytest.fixture(scope='module')
def user(tmp_path_factory):
    """A user's folder outside the checkout: an image and a checkpoint of the digits recipe."""
    home = tmp_path_factory.mktemp('user')
    torch.manual_seed(0)
    model = init_model(f'mmdeit::{DIGITS}')
    torch.save({'state_dict': model.state_dict()}, home / 'epoch_1.pth')
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(home / 'img.png')
    return home


def test_user_infers_with_a_package_config(user):
    proc = _run(['infer', 'img.png', f'mmdeit::{DIGITS}', 'epoch_1.pth', '--topk', '3'], user)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'img.png: top-3' in proc.stdout


@pytest.mark.parametrize(
    'args, message',
    [
        (
            ['infer', 'img.png', 'epoch_1.pth', f'mmdeit::{DIGITS}'],
            'config epoch_1.pth is not a config file',
        ),
        (['test', 'epoch_1.pth', f'mmdeit::{DIGITS}'], 'config epoch_1.pth is not a config file'),
        (
            ['export', 'epoch_1.pth', f'mmdeit::{DIGITS}', 'm.onnx'],
            'is a config file, not a checkpoint',
        ),
        (['train', 'epoch_1.pth'], 'config epoch_1.pth is not a config file'),
        (
            ['vis_attention', 'img.png', 'epoch_1.pth', f'mmdeit::{DIGITS}', '--out', 'att'],
            'config epoch_1.pth is not a config file',
        ),
    ],
)
def test_user_swaps_config_and_checkpoint(user, args, message):
    proc = _run(args, user)
    assert proc.returncode != 0
    assert message in proc.stdout and 'swapped?' in proc.stdout, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stdout, proc.stdout[-3000:]
    assert not (user / 'm.onnx').exists()


@pytest.mark.parametrize(
    'args, message',
    [
        (
            ['infer', 'nope.png', f'mmdeit::{DIGITS}', 'epoch_1.pth'],
            'image nope.png does not exist',
        ),
        (
            ['vis_attention', 'nope.png', f'mmdeit::{DIGITS}', 'epoch_1.pth', '--out', 'att'],
            "'nope.png' is neither an image nor a folder with images",
        ),
    ],
)
def test_user_names_an_image_that_is_not_there(user, args, message):
    proc = _run(args, user)
    assert proc.returncode != 0
    assert f'mmdeit {args[0]}: {message}' in proc.stdout, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stdout, proc.stdout[-3000:]
