"""Which form of stochastic depth runs where: skipping on the CPU, mask-multiply on CUDA (no
host sync per layer) and under torch.compile; both give the same numbers from the same draw."""

import pytest
import torch

from mmdeit.models.backbones.fast_transformer_layer import FastTransformerEncoderLayer
from mmdeit.models.utils import drop_path
from mmdeit.models.utils.drop_path import (
    multiply_dropped,
    skip_dropped_samples,
    skips_dropped_samples,
)


class _Branch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return torch.tanh(self.linear(x))


def test_the_choice_by_device(monkeypatch):
    assert skips_dropped_samples(torch.zeros(1))  # CPU: nonzero costs no device sync
    assert not skips_dropped_samples(torch.zeros(1, device='meta'))  # any other device
    monkeypatch.setattr(drop_path, 'SKIP_DEVICE_TYPES', frozenset())  # as CUDA would be
    assert not skips_dropped_samples(torch.zeros(1))
    monkeypatch.undo()
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert not skips_dropped_samples(torch.zeros(1))


@pytest.mark.parametrize('drop_prob, seed', [(0.5, 0), (0.3, 7), (1e-6, 0), (1 - 1e-6, 0)])
def test_both_forms_give_the_same_result_and_stream(drop_prob, seed):
    branch = _Branch()
    x = torch.randn(16, 5, 6, requires_grad=True)
    identity = torch.randn(16, 5, 6, requires_grad=True)
    results = []
    for form in (skip_dropped_samples, multiply_dropped):
        torch.manual_seed(seed)
        out = form(identity, x, branch, drop_prob)
        after = torch.rand(1)  # the random stream advanced the same
        grads = torch.autograd.grad(out.square().sum(), (x, identity, *branch.parameters()))
        results.append((out, after, grads))
    (out, after, grads), (want, want_after, want_grads) = results
    torch.testing.assert_close(out, want)
    assert torch.equal(after, want_after)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    assert branch.batch_sizes[-1] == 16  # the mask form computes every sample


@pytest.mark.parametrize('skip', [True, False], ids=['cpu form', 'cuda form'])
def test_the_fast_layer_takes_the_form_of_the_device(monkeypatch, skip):
    """Forcing the CUDA choice on the CPU: every sample enters the GEMMs, same output."""
    torch.manual_seed(0)
    layer = FastTransformerEncoderLayer(48, 3, 96, drop_path_rate=0.5).train()
    x = torch.randn(16, 10, 48)
    torch.manual_seed(1)
    want = layer(x)
    rows = []
    real = layer.ffn._hidden

    def spy(t):
        rows.append(t.shape[0])
        return real(t)

    monkeypatch.setattr(layer.ffn, '_hidden', spy)
    if not skip:
        monkeypatch.setattr(drop_path, 'SKIP_DEVICE_TYPES', frozenset())
    torch.manual_seed(1)
    got = layer(x)
    torch.testing.assert_close(got, want)
    assert len(rows) == 1
    assert (rows[0] < 16) if skip else (rows[0] == 16), rows
