"""mmdeit installed from its wheel into a fresh environment, used from the user's own folder.

The wheel is built from the repository's files with the project's own build backend, installed
with pip into a new virtual environment (its dependencies come from the test environment through
a path entry, so nothing is downloaded), and the README's "Use mmdeit from your own project"
section is run as written: the user's config inherits a shipped one through ``mmdeit::``
(mmengine finds it in the installed package's ``.mim`` folder, the mim layout), and
``python -m mmdeit train|test|infer`` runs the tools that ship inside the wheel.
"""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, readme_blocks, shell_commands, write_digit_png

pytestmark = pytest.mark.journey

PROJECT_FILES = ('pyproject.toml', 'README.md', 'model-index.yml', 'mmdeit', 'configs', 'tools')


def _build_wheel(out: Path) -> Path:
    """Build the wheel from a copy of the project's files (the checkout stays untouched)."""
    src = out / 'src'
    src.mkdir()
    for name in PROJECT_FILES:
        path = REPO / name
        if path.is_dir():
            ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    build = 'from setuptools import build_meta; print(build_meta.build_wheel({!r}))'
    proc = subprocess.run(
        [sys.executable, '-c', build.format(str(out))],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


def _fresh_env(root: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed by pip; other packages from the test env."""
    subprocess.run([sys._base_executable, '-m', 'venv', str(root)], check=True)
    python = root / 'bin' / 'python'
    purelib = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The test env's packages (torch, mmengine, ...) after the venv's own: a plain path entry,
    # so the test env's editable mmdeit (a .pth hook there) is not activated.
    Path(purelib, 'deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
    subprocess.run(
        [python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', str(wheel)],
        check=True,
    )
    return python


OWN_PROJECT = 'Use mmdeit from your own project'


def test_wheel_runs_the_readme_own_project_section(tmp_path_factory):
    blocks = [b for b in readme_blocks() if b['section'] == OWN_PROJECT]
    configs = [b['code'] for b in blocks if b['lang'] == 'python']
    commands = [w for b in blocks if b['lang'] == 'bash' for w in shell_commands(b['code'])]
    assert len(configs) == 1 and configs[0].startswith('# my_deit.py')
    assert commands[0][:2] == ['pip', 'install']  # done below, with the wheel
    runs = commands[1:]
    tools = [w[3] for w in runs if w[:3] == ['python', '-m', 'mmdeit']]
    assert tools == ['train', 'test', 'infer'], runs

    build_dir = tmp_path_factory.mktemp('wheel')
    wheel = _build_wheel(build_dir)
    names = zipfile.ZipFile(wheel).namelist()
    assert 'mmdeit/.mim/configs/deit/deit-small-distilled_8xb128_in1k.py' in names
    assert 'mmdeit/.mim/model-index.yml' in names and 'mmdeit/.mim/tools/train.py' in names
    python = _fresh_env(tmp_path_factory.mktemp('venv'), wheel)

    home = tmp_path_factory.mktemp('user_of_the_wheel')
    (home / 'my_deit.py').write_text(configs[0])
    write_digit_png(home / 'digit.png')
    outputs = []
    for words in runs:
        proc = subprocess.run(
            [python, *words[1:]], cwd=home, capture_output=True, text=True, timeout=600
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, ' '.join(words) + '\n' + out[-5000:]
        outputs.append(out)
    train, test, infer = outputs
    assert 'Epoch(train) [1][1/1]' in train and 'accuracy/top1' in train
    assert 'Epoch(test)' in test and 'accuracy/top1' in test
    assert 'top-5' in infer
    # It was the wheel's mmdeit that ran, not the checkout's (located, not imported again).
    origin = subprocess.run(
        [python, '-c', 'import importlib.util as u; print(u.find_spec("mmdeit").origin)'],
        cwd=home, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert str(python.parents[1]) in origin and str(REPO) not in origin
