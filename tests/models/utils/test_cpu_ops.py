"""mmdeit's compiled-graph ops (``cpu_ops.define_cpu_op``): the CPU kernel's numbers, the fake's
shapes and dtypes, the schemas' defaults."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mmdeit.models.utils import gemm_attention, onednn_linear

pytestmark = pytest.mark.skipif(not onednn_linear._HAS_OP, reason='PyTorch built without oneDNN')


def _linear_args(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    return torch.randn(3, 5, 16).to(dtype), linear.weight, linear.bias


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('scale_rows', [(), (8, 0.5)])
def test_onednn_linear_op_is_its_kernel(dtype, scale_rows):
    if dtype == torch.bfloat16 and not onednn_linear.BF16_SUPPORTED:
        pytest.skip('no native bf16 GEMMs in oneDNN on this CPU')
    x, weight, bias = _linear_args(dtype)
    with torch.no_grad():
        got = torch.ops.mmdeit.onednn_linear(x, weight, bias, 'none', *scale_rows)
        want = onednn_linear._onednn_linear_kernel(x, weight, bias, 'none', *scale_rows)
    assert torch.equal(got, want) and got.dtype == dtype
    with FakeTensorMode() as mode:  # what tracing sees
        fake = torch.ops.mmdeit.onednn_linear(*map(mode.from_tensor, (x, weight, bias)), None)
    assert fake.shape == got.shape and fake.dtype == got.dtype


def test_gemm_attention_op_is_its_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.bfloat16) for _ in range(3))
    with torch.no_grad():
        got = torch.ops.mmdeit.gemm_attention(q, k, v, 0.25)
        want = gemm_attention._gemm_attention(q, k, v, 0.25)
    assert torch.equal(got, want) and got.shape == (2, 7, 24)
    with FakeTensorMode() as mode:
        fake = torch.ops.mmdeit.gemm_attention(*map(mode.from_tensor, (q, k, v)), 0.25)
    assert fake.shape == got.shape and fake.dtype == got.dtype


def test_schemas():
    schema = str(torch.ops.mmdeit.onednn_linear.default._schema)
    assert 'int scale_n=0, float scale=1.' in schema and schema.endswith('-> Tensor')
    assert str(torch.ops.mmdeit.gemm_attention.default._schema) == (
        'mmdeit::gemm_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor'
    )
