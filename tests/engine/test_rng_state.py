"""capture_rng_state / restore_rng_state: plain contents, exact round trip, bad fields named."""

import io
import random

import numpy as np
import pytest
import torch

from mmdeit.engine import RNGStateError, capture_rng_state, restore_rng_state


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random())


def test_restore_repeats_every_generator_and_survives_weights_only_load():
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    state = capture_rng_state()
    expected = _draws()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # no allow-list needed
    _draws()
    restore_rng_state(loaded)
    assert _draws() == expected


def _corrupt(path, value):
    state = capture_rng_state()
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


@pytest.mark.parametrize(
    'path, value, field',
    [
        (('torch',), torch.zeros(7, dtype=torch.uint8), 'rng_state.torch'),
        (('torch',), [1, 2], 'rng_state.torch'),
        (('numpy', 'keys'), torch.zeros(623, dtype=torch.int64), 'rng_state.numpy.keys'),
        (('numpy', 'keys'), torch.full((624,), -1, dtype=torch.int64), 'rng_state.numpy.keys'),
        (('numpy', 'pos'), 625, 'rng_state.numpy.pos'),
        (('numpy', 'cached_gaussian'), 'x', 'rng_state.numpy.cached_gaussian'),
        (('numpy',), KeyError, 'rng_state.numpy'),
        (('random', 'version'), 2, 'rng_state.random.version'),
        (('random', 'state'), torch.zeros(625, dtype=torch.int32), 'rng_state.random.state'),
        (('random', 'gauss_next'), 'x', 'rng_state.random.gauss_next'),
    ],
)
def test_a_bad_field_is_named_and_nothing_is_set(path, value, field):
    bad = _corrupt(path, value)
    before = capture_rng_state()
    with pytest.raises(RNGStateError, match=field.replace('.', r'\.')):
        restore_rng_state(bad)
    after = capture_rng_state()
    assert torch.equal(before['torch'], after['torch'])
    assert torch.equal(before['numpy']['keys'], after['numpy']['keys'])
    assert torch.equal(before['random']['state'], after['random']['state'])


def test_not_a_dict():
    with pytest.raises(RNGStateError, match='rng_state: expected a dict'):
        restore_rng_state([1, 2, 3])
