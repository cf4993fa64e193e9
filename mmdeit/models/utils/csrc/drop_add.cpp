// Stochastic depth's residual sum under bf16 autocast, in one pass each way (drop_add.py):
//   drop_add_bf16     out[i] = identity[i] + alpha * branch[j] where kept[j] = i, else
//                     identity[i]: the fp32 stream plus the kept samples' bf16 branch
//   scaled_rows_bf16  the branch's gradient: bf16(alpha * grad[kept[j]])
// Each is what ATen computes for ``identity.index_add(0, kept, branch.float(), alpha=alpha)``
// and its backward (``grad.index_select(0, kept) * alpha`` cast to bf16): the same fp32 FMA and
// rounding, without the cast of the branch, the copy of the stream, the gathered gradient and
// its product in memory.
#include <ATen/Parallel.h>

#include <vector>

#include "cpu_kernels.h"

using namespace mmdeit_kernels;

namespace {

// The branch's b rows' samples of a batch of B: kept's values (kept_samples), or every sample
std::vector<int64_t> branch_samples(const c10::optional<at::Tensor>& kept, int64_t B, int64_t b,
                                    const char* name) {
  std::vector<int64_t> sample = kept_samples(kept, B, name);
  if (!kept.has_value()) {
    TORCH_CHECK(b == B, name, ": without kept, the branch has every sample");
    for (int64_t i = 0; i < B; ++i) sample.push_back(i);
  }
  TORCH_CHECK(static_cast<int64_t>(sample.size()) == b, name,
              ": kept a 1-D int64 tensor of the branch's samples");
  return sample;
}

}  // namespace

at::Tensor drop_add_bf16(at::Tensor identity, at::Tensor branch, c10::optional<at::Tensor> kept,
                         double alpha) {
  TORCH_CHECK(identity.scalar_type() == at::kFloat && branch.scalar_type() == at::kBFloat16 &&
                  identity.is_contiguous() && branch.is_contiguous(),
              "drop_add_bf16: a contiguous fp32 identity and bf16 branch");
  TORCH_CHECK(identity.dim() >= 1 && branch.dim() == identity.dim() &&
                  identity.sizes().slice(1) == branch.sizes().slice(1),
              "drop_add_bf16: identity (B, ...) and branch (b, ...) of one sample shape");
  const int64_t B = identity.size(0), S = B > 0 ? identity.numel() / B : 0;
  const std::vector<int64_t> sample = branch_samples(kept, B, branch.size(0), "drop_add_bf16");
  std::vector<int64_t> row(B, -1);  // sample i -> its branch row, -1 where it was dropped
  for (int64_t j = 0; j < static_cast<int64_t>(sample.size()); ++j) row[sample[j]] = j;
  at::Tensor out = at::empty_like(identity);
  const float* ip = identity.data_ptr<float>();
  const at::BFloat16* bp = branch.data_ptr<at::BFloat16>();
  float* op = out.data_ptr<float>();
  const __m512 a = _mm512_set1_ps(static_cast<float>(alpha));
  at::parallel_for(0, B * S, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = begin; i0 < end;) {  // one sample's part of [begin, end) at a time
      const int64_t s = i0 / S, i1 = std::min(end, (s + 1) * S);
      const at::BFloat16* src = row[s] < 0 ? nullptr : bp + row[s] * S;  // its branch row
      for (int64_t i = i0; i < i1; i += kLanes) {
        const __mmask16 m = i + kLanes <= i1 ? 0xFFFF : (1u << (i1 - i)) - 1;
        const __m512 x = _mm512_maskz_loadu_ps(m, ip + i);
        const __m512 y = src ? _mm512_fmadd_ps(a, load_bf16(src + (i - s * S), m), x) : x;
        _mm512_mask_storeu_ps(op + i, m, y);
      }
      i0 = i1;
    }
  });
  return out;
}

at::Tensor scaled_rows_bf16(at::Tensor grad, c10::optional<at::Tensor> kept, double alpha) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.is_contiguous() && grad.dim() >= 1,
              "scaled_rows_bf16: a contiguous fp32 grad");
  const int64_t B = grad.size(0), S = B > 0 ? grad.numel() / B : 0;
  const int64_t b = kept.has_value() ? kept->numel() : B;
  const std::vector<int64_t> sample = branch_samples(kept, B, b, "scaled_rows_bf16");
  std::vector<int64_t> shape = grad.sizes().vec();
  shape[0] = b;
  at::Tensor out = at::empty(shape, grad.options().dtype(at::kBFloat16));
  const float* gp = grad.data_ptr<float>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const __m512 a = _mm512_set1_ps(static_cast<float>(alpha));
  at::parallel_for(0, b * S, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = begin; i0 < end;) {
      const int64_t j = i0 / S, i1 = std::min(end, (j + 1) * S);
      const float* src = gp + sample[j] * S;  // the gradient of branch row j's sample
      for (int64_t i = i0; i < i1; i += kLanes) {
        const __mmask16 m = i + kLanes <= i1 ? 0xFFFF : (1u << (i1 - i)) - 1;
        store_bf16(op + i, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(m, src + (i - j * S))), m);
      }
      i0 = i1;
    }
  });
  return out;
}
