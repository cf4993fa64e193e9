"""Checkpoints of the shipped DeiT configs with random weights, and running an ONNX model."""

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DEIT_CONFIGS = sorted(p.name for p in (REPO / 'configs' / 'deit').glob('*.py'))
#: One shipped config per arch (tiny, small, base), with and without the distillation token, at
#: 224 and 384: every layer the export meets. The other shipped configs differ from these in
#: training settings only (the exported graph is the same function of other sizes).
EXPORTED_CONFIGS = [
    'deit-tiny_8xb128_in1k.py',
    'deit-tiny-distilled_8xb128_in1k.py',
    'deit-small-distilled_8xb128_in1k.py',
    'deit-base-distilled_8xb32_in1k-384px.py',
]
TINY_DISTILLED = 'deit-tiny-distilled_8xb128_in1k.py'
TINY = 'deit-tiny_8xb128_in1k.py'


def config_path(name: str) -> str:
    return str(REPO / 'configs' / 'deit' / name)


def random_student(config: str, path: Path):
    """The config's student with random weights, saved to ``path``; ``(model, str(path))``.

    The model is what ``init_model`` gives (the fast path, eval mode): the config's
    initialisation less its ``Pretrained`` entry (the 384 fine-tunes start from a 224
    checkpoint), and heads wide enough (std 0.5) that the softmax is far from uniform, so 1e-4
    on it means something.
    """
    from mmdeit.apis import init_model

    torch.manual_seed(0)
    model = init_model(config, **{'model.init_cfg': None})
    generator = torch.Generator().manual_seed(1)
    state = model.state_dict()
    for name, value in state.items():
        if name.startswith('head.layers.head') and name.endswith('weight'):
            value.copy_(torch.randn(value.shape, generator=generator) * 0.5)
    torch.save({'meta': {'dataset_meta': model.dataset_meta}, 'state_dict': state}, path)
    return model, str(path)


@pytest.fixture(scope='session')
def tiny_distilled(tmp_path_factory):
    """``(model, checkpoint)`` of the shipped DeiT-Ti distilled config, random weights."""
    folder = tmp_path_factory.mktemp('tiny_distilled')
    return random_student(config_path(TINY_DISTILLED), folder / 'tiny_distilled.pth')


def run_onnx(path, batch: np.ndarray) -> np.ndarray:
    """The model's ``output`` for ``batch`` in ONNX Runtime (CPU, two threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return session.run(['output'], {'input': batch})[0]
