"""Fixtures of the kernels' tests."""

import pytest

from mmdeit.models.utils import (
    amx_attention,
    amx_attention_grad,
    amx_linear,
    amx_linear_grad,
    cpu_kernels,
)


@pytest.fixture
def amx_on(monkeypatch):
    """mmdeit's C++ kernels and the tile-unit kernels (attention and its backward, linears, weight
    gradients)
    switched on, the kernels built and the tile unit granted (on an AMX CPU both should hold: a
    failure fails the test)."""
    monkeypatch.setattr(cpu_kernels, 'USE_CPU_KERNELS', True)
    monkeypatch.setattr(amx_attention, 'USE_AMX_ATTENTION', True)
    monkeypatch.setattr(amx_attention_grad, 'USE_AMX_ATTENTION_GRAD', True)
    monkeypatch.setattr(amx_linear, 'USE_AMX_LINEAR', True)
    monkeypatch.setattr(amx_linear_grad, 'USE_AMX_WEIGHT_GRAD', True)
    assert cpu_kernels.kernels() is not None, 'the CPU kernels did not build'
    assert amx_attention.tile_unit_ready(), 'Linux did not grant the tile registers'
