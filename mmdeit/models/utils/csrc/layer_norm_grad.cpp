// The backward of the pre-norm LayerNorm in bf16 autocast training (layer_norm_grad.py), from
// the bf16 gradient of its bf16 output (the linear after it gives it back in bf16), in fp32:
//   xhat = (x - mean) * rstd,  g = dy * w,
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw = sum(dy * xhat),  db = sum(dy)
// over the C channels of a row (the means) and over the rows (the sums), with the forward's mean
// and rstd (layer_norm_bf16's stats). One pass over the rows, each held in registers; dw and db
// summed per thread, then added. ATen's backward wants the gradient in fp32: a cast of it first.
#include <ATen/Parallel.h>

#include <cstring>

#include "cpu_kernels.h"

using namespace mmdeit_kernels;

namespace {

// One row: dx written, dy * xhat and dy added to the thread's dw and db.
inline void backward_row(const at::BFloat16* dy, const float* x, const float* stats,
                         const float* w, float* dx, float* dw, float* db, int64_t C, int nv,
                         __m512* xhat, __m512* g) {
  const __m512 mean = _mm512_set1_ps(stats[0]), rstd = _mm512_set1_ps(stats[1]);
  __m512 sum_g = _mm512_setzero_ps(), sum_gx = _mm512_setzero_ps();
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(C, j, nv);
    xhat[j] = _mm512_maskz_mul_ps(m, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j * kLanes), mean),
                                  rstd);
    const __m512 d = load_bf16(dy + j * kLanes, m);
    g[j] = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(m, w + j * kLanes));
    sum_g = _mm512_add_ps(sum_g, g[j]);
    sum_gx = _mm512_fmadd_ps(g[j], xhat[j], sum_gx);
    float* dwj = dw + j * kLanes;
    float* dbj = db + j * kLanes;
    _mm512_mask_storeu_ps(dwj, m, _mm512_fmadd_ps(d, xhat[j], _mm512_maskz_loadu_ps(m, dwj)));
    _mm512_mask_storeu_ps(dbj, m, _mm512_add_ps(d, _mm512_maskz_loadu_ps(m, dbj)));
  }
  const __m512 mean_g = _mm512_set1_ps(_mm512_reduce_add_ps(sum_g) / C);
  const __m512 mean_gx = _mm512_set1_ps(_mm512_reduce_add_ps(sum_gx) / C);
  for (int j = 0; j < nv; ++j) {
    const __m512 centred =
        _mm512_sub_ps(_mm512_sub_ps(g[j], mean_g), _mm512_mul_ps(xhat[j], mean_gx));
    _mm512_mask_storeu_ps(dx + j * kLanes, lanes(C, j, nv), _mm512_mul_ps(rstd, centred));
  }
}

}  // namespace

std::vector<at::Tensor> layer_norm_backward_bf16(at::Tensor grad, at::Tensor x, at::Tensor stats,
                                                 at::Tensor weight,
                                                 c10::optional<at::Tensor> kept) {
  TORCH_CHECK(grad.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kFloat &&
                  grad.is_contiguous() && x.is_contiguous() && x.dim() >= 1 &&
                  grad.dim() == x.dim() && grad.sizes().slice(1) == x.sizes().slice(1) &&
                  (kept.has_value() || grad.size(0) == x.size(0)),
              "layer_norm_backward_bf16: a contiguous bf16 grad and fp32 x of one shape (of "
              "one sample shape with kept)");
  const int64_t C = x.size(-1);
  TORCH_CHECK(C > 0 && C <= kMaxRow, "layer_norm_backward_bf16: rows of 1 to ", kMaxRow,
              " elements");
  // grad's sample s is x's sample kept[s] (the forward's rows); without kept, all of x
  const SampleRows rows(x, kept, "layer_norm_backward_bf16");
  TORCH_CHECK(grad.numel() == rows.out_rows() * C,
              "layer_norm_backward_bf16: grad of kept's samples");
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.is_contiguous() && stats.dim() == 2 &&
                  stats.size(0) == rows.out_rows() && stats.size(1) == 2,
              "layer_norm_backward_bf16: stats a contiguous fp32 (rows, 2) tensor");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == C,
              "layer_norm_backward_bf16: a contiguous fp32 weight of the last dim's size");
  at::Tensor dx = at::empty_like(x);  // every sample of x's: zero where grad has none of it
  if (kept.has_value()) {
    std::vector<bool> read(x.size(0), false);
    for (int64_t i : rows.index) read[i] = true;
    const int64_t sample = rows.per_sample * C;
    for (int64_t i = 0; i < x.size(0); ++i) {
      if (!read[i]) std::memset(dx.data_ptr<float>() + i * sample, 0, sample * sizeof(float));
    }
  }
  const int threads = at::get_num_threads();
  at::Tensor sums = at::zeros({threads, 2, C}, x.options());  // per thread: dw, db
  const at::BFloat16* gp = grad.data_ptr<at::BFloat16>();
  const float* xp = x.data_ptr<float>();
  const float* sp = stats.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  float* sums_p = sums.data_ptr<float>();
  const int nv = static_cast<int>((C + kLanes - 1) / kLanes);
  const int64_t per = rows.per_sample;
  at::parallel_for(0, rows.out_rows(), 8, [&](int64_t begin, int64_t end) {
    __m512 xhat[kMaxVecs], g[kMaxVecs];
    float* dw = sums_p + at::get_thread_num() * 2 * C;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t xr = rows.source(r / per) + r % per;  // x's row
      backward_row(gp + r * C, xp + xr * C, sp + 2 * r, wp, dxp + xr * C, dw, dw + C, C, nv,
                   xhat, g);
    }
  });
  at::Tensor total = sums.sum(0);  // (2, C)
  return {dx, total[0], total[1]};
}
