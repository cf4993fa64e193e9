"""``init_model(..., compile=...)``: the compiled backbone predicts as the eager one.

Not timed here (speed is measured in the benchmark scripts); one inductor compile of the tiny
arch (a few seconds to tens of seconds on 2 cores).
"""

import numpy as np
import pytest
import torch

from mmdeit.apis import inference_model, init_model

from .test_inference import _config


@pytest.fixture
def tiny(tmp_path):
    config = _config(tmp_path)
    ckpt = tmp_path / 'tiny.pth'
    torch.save({'state_dict': init_model(config).state_dict()}, ckpt)
    return config, str(ckpt)


def test_compiled_model_predicts_as_eager(tiny):
    """Inductor (torch.compile's default), through ``inference_model`` as a user runs it."""
    config, ckpt = tiny
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
    want = inference_model(init_model(config, ckpt), images)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = init_model(config, ckpt, compile=True)
    got = inference_model(compiled, images)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # it did compile
    for g, w in zip(got, want, strict=True):
        assert g['pred_label'] == w['pred_label']
        np.testing.assert_allclose(g['pred_scores'], w['pred_scores'], rtol=0, atol=1e-5)
    # in place: the checkpoint's keys and the model's own methods stay
    assert compiled.state_dict().keys() == init_model(config, ckpt).state_dict().keys()


@pytest.mark.parametrize(
    'compile, error, words',
    [
        ('yes', TypeError, 'compile must be True, False or a dict'),
        (dict(mod='max-autotune'), ValueError, "compile has keys ['mod']"),
    ],
)
def test_bad_compile_argument_is_refused(tiny, compile, error, words):
    config, ckpt = tiny
    with pytest.raises(error, match=words.replace('[', r'\[').replace(']', r'\]')):
        init_model(config, ckpt, compile=compile)
