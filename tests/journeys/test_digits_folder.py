"""docs/custom_dataset.md's digits-as-a-folder section, as the user runs it (shortened).

The folder is written by ``python -m mmdeit digits_to_folder`` from a temporary folder outside
the checkout; the student config is the doc's own ``my_digits.py`` block, trained for one epoch
on a part of the folder with a teacher checkpoint made here (the doc trains its teacher first,
which the other journeys cover).
"""

import re
from pathlib import Path

import numpy as np
import pytest
from mmengine.registry import DefaultScope

from mmdeit.datasets import DigitsDataset
from mmdeit.registry import DATASETS

from .conftest import REPO, run_cli, tool

DOC = REPO / 'docs' / 'custom_dataset.md'


def _doc_block(first_line: str) -> str:
    """The python block of the doc that starts with ``first_line``."""
    blocks = re.findall(r'```python\n(.*?)```', DOC.read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line + '\n')]
    assert len(found) == 1, f'{DOC} has no single python block starting with {first_line!r}'
    return found[0]


def test_digits_folder_trains_the_docs_config(user_home, digits_teacher, tmp_path):
    home = tmp_path
    run_cli(['-m', 'mmdeit', 'digits_to_folder', 'data/digits_folder'], home, 'to_folder')
    root = home / 'data' / 'digits_folder'
    assert sorted(p.name for p in (root / 'train').iterdir()) == [str(i) for i in range(10)]
    assert sum(1 for _ in root.rglob('*.png')) == 1437 + 360
    # a second run does not overwrite it unasked (the tool's main, here: no second import)
    from tools.dataset_converters.digits_to_folder import main as to_folder

    with pytest.raises(SystemExit, match='pass --force'):
        to_folder([str(root)])

    body = _doc_block('# my_digits.py')
    assert "_base_ = 'mmdeit::digits/" in body
    short = (
        'train_dataloader.update(num_workers=0, persistent_workers=False)\n'
        "train_dataloader['dataset']['indices'] = 64\n"
        'val_dataloader.update(num_workers=0, persistent_workers=False)\n'
        "val_dataloader['dataset']['indices'] = 60\n"
        'test_dataloader = val_dataloader\n'
        'train_cfg = dict(max_epochs=1)\n'
        f"model['teacher_ckpt'] = {digits_teacher['teacher_ckpt']!r}\n"
    )
    (home / 'my_digits.py').write_text(body + short)
    out = run_cli([tool('train.py'), 'my_digits.py', '--work-dir', 'work_dirs/my_digits'], home,
                  'train').stdout  # fmt: skip
    assert 'CustomDataset' in out or 'data/digits_folder' in out
    assert re.search(r'Epoch\(val\) \[1\]\[\d+/\d+\]\s+accuracy/top1', out), out[-3000:]
    assert 'per_head/teacher_agreement' in out and 'loss_distill' in out
    assert (home / 'work_dirs' / 'my_digits' / 'epoch_1.pth').is_file()


@pytest.mark.parametrize('split', ['train', 'val'])
def test_folder_images_are_the_datasets_pixels(tmp_path, split):
    from tools.dataset_converters.digits_to_folder import write_folder

    counts = write_folder(str(tmp_path))
    assert counts == {'train': 1437, 'val': 360}
    with DefaultScope.overwrite_default_scope('mmdeit'):
        folder = DATASETS.build(
            dict(
                type='CustomDataset',
                data_root=str(tmp_path),
                data_prefix=split,
                pipeline=[dict(type='LoadImageFromFile')],
            )
        )
    digits = {info['digits_index']: info for info in DigitsDataset(split=split).load_data_list()}
    assert len(folder) == len(digits)
    assert folder.metainfo['classes'] == DigitsDataset.METAINFO['classes']
    for i in range(0, len(folder), 37):
        item = folder[i]
        source = digits[int(Path(item['img_path']).stem)]
        assert item['gt_label'] == source['gt_label']
        np.testing.assert_array_equal(item['img'], source['img'])  # BGR of grey = grey
