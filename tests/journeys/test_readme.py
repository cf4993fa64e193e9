"""The README's commands and Python examples, run as written, so the README cannot drift.

Every fenced block of README.md is either run here or named in ``NOT_RUN_HERE`` with the test
that runs it instead; a new block that is neither fails :func:`test_every_readme_block_is_run`.
Commands written for the checkout (``uv run python tools/...``) run in a folder that holds the
checkout's ``configs`` and ``tools`` (linked) and the files the commands name, made here:
``student.pth``, ``cat.jpg``, ``digit.png``, ``digits_student.pth`` and an official DeiT
checkpoint. ``uv run`` is the test's own interpreter (the same locked environment).
"""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import (
    CONFIGS,
    REPO,
    TOOLS,
    readme_blocks,
    run_cli,
    run_two_at_a_time,
    shell_commands,
    write_digit_png,
    write_imagenet,
)

pytestmark = pytest.mark.journey

#: Commands of the README not run by this file, with where they are run.
NOT_RUN_HERE = {
    'make demo': 'tests/tools/test_demo.py runs tools/demo.py (what `make demo` runs)',
    'make test': 'this suite is `make test`',
    'uv run bash tools/dist_train.sh': 'eight processes; tests/tools/test_dist_train.py runs '
    'the script with two',
}
OWN_PROJECT = 'Use mmdeit from your own project'  # its blocks run in test_packaged_install.py


def _not_run(words) -> str:
    line = ' '.join(words)
    return next((why for cmd, why in NOT_RUN_HERE.items() if line.startswith(cmd)), '')


def _save_student(config: str, path: Path) -> None:
    from mmdeit.apis import init_model

    model = init_model(str(CONFIGS / config))
    meta = {'dataset_meta': model.dataset_meta}
    torch.save({'meta': meta, 'state_dict': model.state_dict()}, path)


@pytest.fixture(scope='module')
def readme_folder(tmp_path_factory) -> Path:
    """A folder laid out as the checkout's root, holding the files the README's commands name."""
    folder = tmp_path_factory.mktemp('readme')
    (folder / 'configs').symlink_to(CONFIGS)
    (folder / 'tools').symlink_to(TOOLS)
    write_imagenet(folder / 'data' / 'imagenet')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 260, 3), np.uint8)).save(folder / 'cat.jpg')
    write_digit_png(folder / 'digit.png')
    _save_student('deit/deit-small-distilled_8xb128_in1k.py', folder / 'student.pth')
    _save_student(
        'digits/deit-digits-tiny-distilled-hard_1xb64_digits.py', folder / 'digits_student.pth'
    )
    import timm

    official = timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False)
    name = 'deit_tiny_distilled_patch16_224-b40b3cf7.pth'  # the official release's file name
    torch.save({'model': official.state_dict()}, folder / name)
    return folder


def _commands(section_filter):
    found = []
    for block in readme_blocks():
        if block['lang'] == 'bash' and section_filter(block['section']):
            found += [(block['section'], words) for words in shell_commands(block['code'])]
    return found


CHECKOUT_COMMANDS = [
    words for section, words in _commands(lambda s: s != OWN_PROJECT) if not _not_run(words)
]


def test_every_readme_block_is_run():
    """Each block is run by a test below, or says where it is run (no block drifts unseen)."""
    for block in readme_blocks():
        if block['section'] == OWN_PROJECT or block['lang'] in ('python', 'text'):
            continue  # own-project blocks: test_packaged_install; python: below; text: no code
        assert block['lang'] == 'bash', f'README block of another kind: {block}'
        for words in shell_commands(block['code']):
            assert words[:2] == ['uv', 'run'] or _not_run(words), ' '.join(words)
    assert any(w[3] == 'tools/train.py' for w in CHECKOUT_COMMANDS)


def _run_command(words, folder: Path, tmp_dir: Path) -> None:
    assert words[:3] == ['uv', 'run', 'python'], words
    script, args = words[3], words[4:]
    if script == 'tools/train.py':
        # The README's promise for this one: without ImageNet it stops at once, saying where
        # it looked and what layout it expects (here the folder has no data/imagenet).
        bare = tmp_dir / 'no_data'
        bare.mkdir()
        (bare / 'configs').symlink_to(CONFIGS)
        (bare / 'tools').symlink_to(TOOLS)
        proc = run_cli([script, *args], bare, 'train', expect_ok=False)
        assert proc.returncode == 1, proc.stdout[-3000:]
        assert 'data/imagenet' in proc.stdout and 'expected layout' in proc.stdout
        assert 'Traceback' not in proc.stdout
        return
    out = run_cli([script, *args], folder, Path(script).stem).stdout
    expected = {
        'tools/test.py': 'accuracy/top1',
        'tools/infer.py': 'top-5',
        'tools/model_converters/deit_to_mmdeit.py': '',
        'tools/visualization/vis_attention.py': '',
    }
    assert script in expected, f'README command with no expectation here: {words}'
    assert expected[script] in out, out[-3000:]
    for arg in args:  # outputs the command names exist afterwards
        if arg.endswith('.pth'):
            assert (folder / arg).is_file(), arg
    if script.endswith('vis_attention.py'):
        assert list((folder / args[args.index('--out') + 1]).glob('digit*.png'))


PYTHON_BLOCKS = [b for b in readme_blocks() if b['lang'] == 'python']
SCRIPTS = [b['code'] for b in PYTHON_BLOCKS if not b['code'].startswith('# my_')]
CONFIG_FILES = [b['code'] for b in PYTHON_BLOCKS if b['code'].startswith('# my_')]


def _run_script(index: int, folder: Path) -> None:
    path = folder / f'readme_example_{index}.py'
    path.write_text(SCRIPTS[index])
    out = run_cli([path], folder, path.stem).stdout
    if 'inference_model' in SCRIPTS[index]:
        assert out.strip(), 'the example prints its prediction'


def _check_config_files(folder: Path) -> None:
    """The config files the README shows, parsed and built as a user's process would (the
    own-project one is also trained by the wheel test; the downstream one by mmdet's registry)."""
    checker = folder / 'check_configs.py'
    checker.write_text(CHECK_CONFIGS)
    names = []
    for code in CONFIG_FILES:
        name = code.splitlines()[0][2:].strip()
        (folder / name).write_text(code)
        names.append(name)
    out = run_cli([checker, *names], folder, 'readme_configs').stdout
    assert out.count('built') == len(names), out[-3000:]


@pytest.fixture(scope='module')
def outcomes(readme_folder, tmp_path_factory) -> dict:
    """Every runnable README block run, two at a time; job name -> None or its exception."""
    jobs = {}
    for words in CHECKOUT_COMMANDS:
        tmp_dir = tmp_path_factory.mktemp('cmd')
        jobs[words[3]] = functools.partial(_run_command, words, readme_folder, tmp_dir)
    for i in range(len(SCRIPTS)):
        jobs[f'python block {i}'] = functools.partial(_run_script, i, readme_folder)
    jobs['config files'] = functools.partial(_check_config_files, readme_folder)
    return run_two_at_a_time(jobs)


@pytest.mark.parametrize('words', CHECKOUT_COMMANDS, ids=lambda w: w[3])
def test_readme_command_runs(words, outcomes):
    if outcomes[words[3]] is not None:
        raise outcomes[words[3]]


@pytest.mark.parametrize('index', range(len(SCRIPTS)))
def test_readme_python_example_runs(index, outcomes):
    if outcomes[f'python block {index}'] is not None:
        raise outcomes[f'python block {index}']


def test_readme_config_files_build(outcomes):
    assert SCRIPTS and CONFIG_FILES
    if outcomes['config files'] is not None:
        raise outcomes['config files']


CHECK_CONFIGS = """
import sys
from mmengine.config import Config
from mmengine.registry import init_default_scope
import mmdeit  # noqa: F401  (mmdeit:: bases, mmdeit.* types)

for name in sys.argv[1:]:
    cfg = Config.fromfile(name)
    scope = cfg.get('default_scope', 'mmdeit')
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
    else:
        from mmdeit.registry import MODELS
    model = MODELS.build(cfg.model)
    print('built', name, type(model).__name__, type(model.backbone).__name__)
"""


def test_the_readme_names_no_missing_file():
    """Paths the README links or runs exist in the checkout."""
    text = (REPO / 'README.md').read_text()
    for word in text.replace('(', ' ').replace(')', ' ').replace('`', ' ').split():
        if word.startswith(('configs/', 'tools/', 'docs/')) and word.endswith(('.py', '.md')):
            assert (REPO / word).is_file(), word
