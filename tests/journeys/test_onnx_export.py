"""ONNX export as a user runs it: their config (a child of a shipped recipe) and checkpoint in
their own folder, ``python -m mmdeit export`` and ``tools/deployment/export_onnx.py`` as
subprocesses, the model then run in ONNX Runtime with a dynamic batch, against PyTorch."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import run_cli, run_two_at_a_time, tool, user_config

pytestmark = pytest.mark.journey

BASE = 'deit/deit-tiny-distilled_8xb128_in1k.py'
BODY = """
num_classes = 5
model = dict(
    backbone=dict(img_size=64),
    head=dict(num_classes=num_classes, teacher_num_classes=num_classes),
    init_cfg=None,
)
"""


@pytest.fixture(scope='module')
def user(tmp_path_factory):
    """The user's folder: their 5-class config at 64 px and a checkpoint of it."""
    from mmdeit.apis import init_model

    home = tmp_path_factory.mktemp('onnx_user')
    config = user_config(home, BASE, BODY, name='my_deit.py')
    torch.manual_seed(0)
    model = init_model(config)
    ckpt = home / 'work_dirs' / 'epoch_1.pth'
    ckpt.parent.mkdir()
    torch.save({'state_dict': model.state_dict()}, ckpt)
    return home, config, ckpt, model


def _onnxruntime(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(['output'], {'input': batch})[0]


#: The user's commands (``python ARGS`` in their folder) and the head each exports.
EXPORTS = {
    'fused': (['-m', 'mmdeit', 'export'], None),  # the default: the fused head
    'dist': ([tool('deployment/export_onnx.py')], 'dist'),
}


@pytest.fixture(scope='module')
def runs(user) -> dict:
    """The exports and a refused one, as subprocesses two at a time: name -> the process."""
    home, config, ckpt, _ = user
    procs = {}

    def export(name):
        command, head = EXPORTS[name]
        out = Path('deploy') / f'{name}.onnx'
        args = [*command, config.name, ckpt.relative_to(home), out]
        procs[name] = run_cli(args + (['--head', head] if head else []), home, f'export_{name}')

    def missing():
        args = ['-m', 'mmdeit', 'export', config.name, 'nope.pth', 'm.onnx']
        procs['missing'] = run_cli(args, home, 'export_missing', expect_ok=False)

    jobs = {name: functools.partial(export, name) for name in EXPORTS}
    outcomes = run_two_at_a_time({**jobs, 'missing': missing})
    return {name: outcomes[name] or procs[name] for name in outcomes}


@pytest.mark.parametrize('name', list(EXPORTS))
def test_user_exports_and_runs_in_onnxruntime(user, runs, name):
    home, _, _, model = user
    if isinstance(runs[name], BaseException):
        raise runs[name]
    out = home / 'deploy' / f'{name}.onnx'
    assert out.is_file()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # batch 3
    with torch.no_grad():
        cls_score, dist_score = model.head.forward_logits(model.extract_feat(x))
    logits = dist_score if name == 'dist' else (cls_score + dist_score) / 2
    got = _onnxruntime(out, x.numpy())
    np.testing.assert_allclose(got, logits.softmax(-1).numpy(), rtol=0, atol=1e-4)


def test_user_export_refuses_a_missing_checkpoint(user, runs):
    home = user[0]
    proc = runs['missing']
    if isinstance(proc, BaseException):
        raise proc
    assert proc.returncode != 0
    assert 'mmdeit export: checkpoint nope.pth does not exist' in proc.stdout
    assert not (home / 'm.onnx').exists()
