"""``export_onnx`` / ``python -m mmdeit export``: ONNX Runtime gives PyTorch's numbers.

A shipped DeiT config of each arch (tiny, small, base; plain and distilled; 224 and 384) at its
own input size, random weights saved as a checkpoint, exported at batch 1 and run at another
batch size; PyTorch's side is the model a user runs (``init_model``: the fast path, the config's
head). The CLI journey from a user's folder is ``tests/journeys/test_onnx_export.py``.
"""

import json
import sys

import numpy as np
import pytest
import torch

from mmdeit.__main__ import main as mmdeit_main
from mmdeit.deployment import METADATA_KEYS, export_onnx

from .conftest import (
    DEIT_CONFIGS,
    EXPORTED_CONFIGS,
    TINY,
    TINY_DISTILLED,
    config_path,
    random_student,
    run_onnx,
)

TEACHER_10 = 'model.head.teacher_num_classes=10'  # a teacher of other classes than the student


def _inputs(model, batch: int, seed: int = 0) -> torch.Tensor:
    """A batch as the data preprocessor gives it: (B, 3, H, W), about unit scale."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *model.backbone.img_size, generator=generator)


def _metadata(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_exported_configs_cover_every_shipped_arch():
    """tiny, small and base; plain and distilled; 224 and 384 among the configs exported below."""
    assert set(EXPORTED_CONFIGS) <= set(DEIT_CONFIGS)
    for part in ('tiny', 'small', 'base', 'distilled', '384px'):
        assert any(part in name for name in EXPORTED_CONFIGS), part
    archs = {name.split('_')[0].split('-')[1] for name in DEIT_CONFIGS}
    assert archs == {'tiny', 'small', 'base'}, archs


@pytest.mark.parametrize('name', EXPORTED_CONFIGS)
def test_onnxruntime_equals_pytorch_on_every_shipped_arch(name, tmp_path):
    """Default export (the config's head: fused for the distilled ones; softmax) of random
    weights at the config's own input size, against the model ``init_model`` gives."""
    config = config_path(name)
    model, ckpt = random_student(config, tmp_path / 'student.pth')
    assert model.backbone.fast_path  # the user's PyTorch model; the export takes the plain path
    out = export_onnx(config, ckpt, tmp_path / 'model.onnx')
    x = _inputs(model, batch=1)  # other batch sizes: the head test below (the same wrapper)
    with torch.no_grad():
        want = model(x, mode='tensor').softmax(dim=-1).numpy()
    got = run_onnx(out, x.numpy())
    assert got.shape == want.shape == (1, 1000)
    assert want.max() > 0.05  # far from the uniform 1e-3: the tolerance below is meaningful
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    meta = _metadata(out)
    assert set(meta) == set(METADATA_KEYS)
    assert meta['head'] == ('fused' if 'distilled' in name else 'single')
    assert json.loads(meta['input_size']) == list(model.backbone.img_size)
    assert len(json.loads(meta['classes'])) == 1000


@pytest.mark.parametrize('head', ['fused', 'cls', 'dist'])
def test_head_selection_and_logits_at_another_batch_size(head, tiny_distilled, tmp_path):
    """Exported at batch 1, run at batch 3; the logits of the head chosen."""
    model, ckpt = tiny_distilled
    out = export_onnx(
        config_path(TINY_DISTILLED), ckpt, tmp_path / f'{head}.onnx', head=head, softmax=False
    )
    x = _inputs(model, batch=3, seed=1)
    with torch.no_grad():
        cls_score, dist_score = model.head.forward_logits(model.extract_feat(x))
    want = dict(fused=(cls_score + dist_score) / 2, cls=cls_score, dist=dist_score)[head]
    got = run_onnx(out, x.numpy())
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)
    assert (cls_score - dist_score).abs().mean() > 1  # the heads differ: the choice shows
    meta = _metadata(out)
    assert (meta['head'], meta['output']) == (head, 'logits')


def test_the_exported_last_layer_computes_the_read_tokens_only(tiny_distilled, tmp_path):
    """The graph's last FFN works on the cls and dist tokens alone (as the PyTorch model's),
    the other layers' on all 2 + 14 x 14 tokens (shapes inferred by onnx)."""
    import onnx

    out = export_onnx(config_path(TINY_DISTILLED), tiny_distilled[1], tmp_path / 'm.onnx')
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(out))).graph
    shapes = {v.name: v.type.tensor_type.shape.dim for v in graph.value_info}
    # The FFN's GELU: an Erf node (opsets before 20) or a Gelu node; its input (B, n, 4C).
    gelus = [n for n in graph.node if n.op_type in ('Erf', 'Gelu')]
    tokens = [shapes[n.input[0]][1].dim_value for n in gelus]
    assert tokens == [2 + 14 * 14] * 11 + [2], tokens


def _cli(*args):
    with pytest.raises(SystemExit) as exit_info:
        mmdeit_main(['export', *map(str, args)])
    return str(exit_info.value.code)


@pytest.fixture
def some_file(tmp_path):
    """A checkpoint that exists: the refusals below come before it is read."""
    path = tmp_path / 'ckpt.pth'
    path.write_bytes(b'')
    return path


@pytest.mark.parametrize(
    'args, words',
    [
        ((TINY_DISTILLED, 'missing.pth', 'm.onnx'), 'checkpoint missing.pth does not exist'),
        (('nowhere.py', '{ckpt}', 'm.onnx'), 'config nowhere.py does not exist'),
        ((TINY_DISTILLED, '{ckpt}', 'model.pt'), "output must be a path ending in .onnx, got '"),
        ((TINY_DISTILLED, '{ckpt}', 'm.onnx', '--head', 'both'), "head must be one of ('fused',"),
        ((TINY, '{ckpt}', 'm.onnx', '--head', 'dist'), "head 'dist' needs the two heads"),
        (
            (TINY_DISTILLED, '{ckpt}', 'm.onnx', '--head', 'fused', '--cfg-options', TEACHER_10),
            "head 'fused' uses head_dist, which predicts the teacher's teacher_num_classes=10",
        ),
        ((TINY_DISTILLED, '{ckpt}', 'm.onnx', '--opset', '11'), 'opset must be an int in [14, 20]'),
    ],
)
def test_bad_input_is_refused_naming_it(args, words, some_file, tmp_path):
    args = [
        config_path(a) if a.endswith('.py') and a != 'nowhere.py' else a.format(ckpt=some_file)
        for a in args
    ]
    message = _cli(*args)
    assert message.startswith('mmdeit export: ') and words in message, message


def test_onnx_not_installed_names_the_extra(monkeypatch, some_file, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # import onnx raises ImportError
    message = _cli(config_path(TINY_DISTILLED), some_file, tmp_path / 'm.onnx')
    assert 'needs the onnx package' in message and 'pip install mmdeit[deploy]' in message
    assert not (tmp_path / 'm.onnx').exists()
