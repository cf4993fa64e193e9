"""Stochastic depth that skips dropped samples: same numbers as mmcv's DropPath, less work."""

import pytest
import torch
from mmcv.cnn.bricks.drop import DropPath

from mmdeit.models.utils.drop_path import drop_path_mask, multiply_dropped, skip_dropped_samples


class _Branch(torch.nn.Module):
    """A per-sample residual branch that records the batch sizes it was called with."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return torch.tanh(self.linear(x))


def _reference(identity, x, branch, drop_prob, seed):
    torch.manual_seed(seed)
    return identity + DropPath(drop_prob).train()(branch(x))


def _grads(out, *tensors):
    return torch.autograd.grad(out.square().sum(), tensors, allow_unused=False)


@pytest.mark.parametrize('drop_prob, seed', [(0.5, 0), (0.5, 1), (0.3, 7)])
def test_equals_mmcv_drop_path_with_fewer_rows(drop_prob, seed):
    branch = _Branch()
    x = torch.randn(16, 5, 6, requires_grad=True)
    identity = torch.randn(16, 5, 6, requires_grad=True)
    want = _reference(identity, x, branch, drop_prob, seed)
    want_grads = _grads(want, x, identity, *branch.parameters())
    branch.batch_sizes.clear()
    torch.manual_seed(seed)
    got = skip_dropped_samples(identity, x, branch, drop_prob)
    torch.testing.assert_close(got, want)
    for g, w in zip(_grads(got, x, identity, *branch.parameters()), want_grads):
        torch.testing.assert_close(g, w)
    torch.manual_seed(seed)
    num_kept = int(drop_path_mask(x, drop_prob).sum())
    assert 0 < num_kept < 16  # the seeds are chosen so that some samples are dropped
    assert branch.batch_sizes == [num_kept]  # the dropped samples were never computed
    torch.manual_seed(seed)  # the reference kept for the tests: mmcv's numbers
    torch.testing.assert_close(multiply_dropped(identity, x, branch, drop_prob), want)
    # The random stream advanced exactly as mmcv's: the next draw is the same.
    torch.manual_seed(seed)
    _reference(identity, x, branch, drop_prob, seed)
    after_mmcv = torch.rand(1)
    torch.manual_seed(seed)
    skip_dropped_samples(identity, x, branch, drop_prob)
    assert torch.equal(torch.rand(1), after_mmcv)


@pytest.mark.parametrize('drop_prob, kept', [(1e-6, 4), (1 - 1e-6, 0)])
def test_all_kept_and_all_dropped(drop_prob, kept):
    branch = _Branch()
    x = torch.randn(4, 5, 6)
    identity = torch.randn(4, 5, 6)
    want = _reference(identity, x, branch, drop_prob, 0)
    torch.manual_seed(0)
    assert int(drop_path_mask(x, drop_prob).sum()) == kept
    branch.batch_sizes.clear()
    torch.manual_seed(0)
    got = skip_dropped_samples(identity, x, branch, drop_prob)
    torch.testing.assert_close(got, want)
    assert branch.batch_sizes == [4]  # nothing to skip / the whole batch times a zero mask
    if kept == 0:
        torch.testing.assert_close(got, identity)
        # Every parameter stays in the graph (DDP needs a gradient, even a zero one).
        got.sum().backward()
        assert all(p.grad is not None for p in branch.parameters())


def test_shortcut_of_fewer_tokens():
    """The identity may hold only the first tokens (the backbone's last layer)."""
    branch = _Branch()
    x = torch.randn(8, 5, 6)
    identity = x[:, :2]

    def first_two(t):
        return branch(t)[:, :2]

    want = _reference(identity, x, first_two, 0.5, 3)
    torch.manual_seed(3)
    torch.testing.assert_close(skip_dropped_samples(identity, x, first_two, 0.5), want)


@pytest.mark.parametrize('drop_prob, seed', [(1e-6, 0), (1 - 1e-6, 0), (0.5, 0)])
def test_branch_of_another_dtype_is_cast_to_the_stream(drop_prob, seed):
    """A bf16 branch (what autocast gives) is added into an fp32 stream as fp32, and an fp32
    branch gives bit for bit the uncast sums."""
    identity = torch.randn(8, 5, 6)
    x = torch.randn(8, 5, 6)
    branch = _Branch()
    torch.manual_seed(seed)
    got = skip_dropped_samples(identity, x, lambda t: branch(t).bfloat16(), drop_prob)
    assert got.dtype == torch.float32
    torch.manual_seed(seed)
    mask = drop_path_mask(x, drop_prob)
    keep = 1 - drop_prob
    rounded = branch(x).bfloat16().float()
    torch.testing.assert_close(got, identity + rounded * mask.view(-1, 1, 1) / keep)
    torch.manual_seed(seed)
    exact = skip_dropped_samples(identity, x, branch, drop_prob)
    kept = mask.nonzero().view(-1)
    expected = {1e-6: 8, 0.5: 3}.get(drop_prob, 0)
    assert kept.numel() == expected  # all kept, some kept, none kept
    if kept.numel() == 8:
        want = torch.add(identity, branch(x), alpha=1 / keep)
    elif kept.numel() == 0:
        want = torch.addcmul(identity, branch(x), (mask / keep).view(-1, 1, 1))
    else:
        want = identity.index_add(0, kept, branch(x[kept]), alpha=1 / keep)
    assert torch.equal(exact, want)
