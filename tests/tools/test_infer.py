"""``tools/infer.py`` on a user's mistakes: each refused by name in one line, before the model
is loaded where the mistake is in the arguments (in-process; the CLI runs are in
``tests/apis/test_config_file.py``)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdeit.apis import init_model
from tools import infer

CONFIG = str(
    Path(__file__).resolve().parents[2] / 'configs/digits/deit-digits-tiny_1xb64_digits.py'
)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('ckpt') / 'epoch_1.pth'
    torch.save({'state_dict': init_model(CONFIG).state_dict()}, path)
    return str(path)


def test_an_image_that_is_not_there_is_named_before_the_model_loads(tmp_path):
    missing = str(tmp_path / 'nope.png')
    # the checkpoint does not exist either: the image is checked first, so it is the one named
    named = f'mmdeit infer: image {re.escape(missing)} does not exist'
    with pytest.raises(SystemExit, match=named):
        infer.main([missing, CONFIG, str(tmp_path / 'no.pth'), '--no-keep-freed-memory'])


def test_a_file_that_is_not_an_image_is_named(tmp_path, checkpoint):
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    with pytest.raises(SystemExit, match=r'mmdeit infer: cannot read image .*notes\.png'):
        infer.main([str(text), CONFIG, checkpoint, '--no-keep-freed-memory'])


@pytest.mark.parametrize('topk', ['0', '-2'])
def test_topk_below_one_is_refused_by_name(topk, capsys):
    with pytest.raises(SystemExit) as exit_info:
        infer.parse_args(['img.png', CONFIG, 'epoch_1.pth', '--topk', topk])
    assert exit_info.value.code == 2
    assert f'--topk must be at least 1, got {topk}' in capsys.readouterr().err


def test_an_image_prints_its_top_classes(tmp_path, checkpoint, capsys):
    img = tmp_path / 'img.png'
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(img)
    result = infer.main([str(img), CONFIG, checkpoint, '--topk', '2', '--no-keep-freed-memory'])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f'{img}: top-2' and len(lines) == 3
    assert lines[1].startswith('1. ') and f'(class {result["pred_label"]})' in lines[1]
