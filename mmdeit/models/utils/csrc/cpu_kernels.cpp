// Three row kernels for bf16 autocast inference on AVX-512 BF16 CPUs (mmdeit/models/utils/cpu_kernels.py).
//
// Each computes in fp32 and rounds to bf16 once, as the ATen ops they replace do, in one pass over
// a row held in registers (a row of up to kMaxRow elements):
//   softmax_bf16_    softmax over the last dim of a (R, N) bf16 tensor, in place (exp_u20)
//   layer_norm_bf16  LayerNorm of a (..., C) fp32 tensor, written in bf16
//   add_bf16_out     out = x (fp32) + y (bf16), out may be x
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <immintrin.h>

#include <cmath>

namespace {

using FloatVec = at::vec::Vectorized<float>;
constexpr int kLanes = 16;                  // fp32 lanes of a __m512
constexpr int kMaxVecs = 64;                // a row of up to 1024 elements stays in registers/stack
constexpr int64_t kMaxRow = kMaxVecs * kLanes;

inline __mmask16 lanes(int64_t n, int j, int nv) {  // the lanes of vector j of a row of n
  return (j == nv - 1 && n % kLanes) ? static_cast<__mmask16>((1u << (n % kLanes)) - 1) : 0xFFFF;
}

inline __m512 load_bf16(const at::BFloat16* p, __mmask16 m) {  // bf16 -> fp32: a shift
  __m256i bits = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

inline void store_bf16(at::BFloat16* p, __m512 v, __mmask16 m) {  // round to nearest even
  _mm256_mask_storeu_epi16(p, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

}  // namespace

void softmax_bf16_(at::Tensor x) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() == 2,
              "softmax_bf16_: a contiguous 2-D bf16 tensor");
  const int64_t R = x.size(0), N = x.size(1);
  TORCH_CHECK(N > 0 && N <= kMaxRow, "softmax_bf16_: rows of 1 to ", kMaxRow, " elements");
  at::BFloat16* base = x.data_ptr<at::BFloat16>();
  const int nv = static_cast<int>((N + kLanes - 1) / kLanes);
  at::parallel_for(0, R, 64, [&](int64_t begin, int64_t end) {
    __m512 v[kMaxVecs];
    for (int64_t r = begin; r < end; ++r) {
      at::BFloat16* row = base + r * N;
      __m512 vmax = _mm512_set1_ps(-INFINITY);
      for (int j = 0; j < nv; ++j) {
        const __mmask16 m = lanes(N, j, nv);
        v[j] = load_bf16(row + j * kLanes, m);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, v[j]);
      }
      const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
      __m512 vsum = _mm512_setzero_ps();
      for (int j = 0; j < nv; ++j) {
        v[j] = FloatVec(_mm512_sub_ps(v[j], max)).exp_u20();
        vsum = _mm512_mask_add_ps(vsum, lanes(N, j, nv), vsum, v[j]);
      }
      const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum));
      for (int j = 0; j < nv; ++j) {
        store_bf16(row + j * kLanes, _mm512_mul_ps(v[j], inv), lanes(N, j, nv));
      }
    }
  });
}

at::Tensor layer_norm_bf16(at::Tensor x, at::Tensor weight, at::Tensor bias, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "layer_norm_bf16: a contiguous fp32 tensor");
  const int64_t C = x.size(-1), R = C ? x.numel() / C : 0;
  TORCH_CHECK(C > 0 && C <= kMaxRow, "layer_norm_bf16: rows of 1 to ", kMaxRow, " elements");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && bias.is_contiguous() && weight.numel() == C &&
                  bias.numel() == C,
              "layer_norm_bf16: contiguous fp32 weight and bias of the last dim's size");
  at::Tensor y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const int nv = static_cast<int>((C + kLanes - 1) / kLanes);
  at::parallel_for(0, R, 32, [&](int64_t begin, int64_t end) {
    __m512 v[kMaxVecs];
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * C;
      __m512 vsum = _mm512_setzero_ps();
      for (int j = 0; j < nv; ++j) {
        v[j] = _mm512_maskz_loadu_ps(lanes(C, j, nv), row + j * kLanes);
        vsum = _mm512_add_ps(vsum, v[j]);
      }
      const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(vsum) / C);
      __m512 vsq = _mm512_setzero_ps();
      for (int j = 0; j < nv; ++j) {  // two passes: the variance of the centred values
        const __m512 d = _mm512_maskz_sub_ps(lanes(C, j, nv), v[j], mean);
        vsq = _mm512_fmadd_ps(d, d, vsq);
      }
      const float var = _mm512_reduce_add_ps(vsq) / C;
      const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(var + static_cast<float>(eps)));
      at::BFloat16* out = yp + r * C;
      for (int j = 0; j < nv; ++j) {
        const __mmask16 m = lanes(C, j, nv);
        const __m512 w = _mm512_maskz_loadu_ps(m, wp + j * kLanes);
        const __m512 b = _mm512_maskz_loadu_ps(m, bp + j * kLanes);
        const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(v[j], mean), rstd);
        store_bf16(out + j * kLanes, _mm512_fmadd_ps(normed, w, b), m);
      }
    }
  });
  return y;
}

void add_bf16_out(at::Tensor x, at::Tensor y, at::Tensor out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && y.scalar_type() == at::kBFloat16 &&
                  out.scalar_type() == at::kFloat,
              "add_bf16_out: fp32 x and out, bf16 y");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous() && out.is_contiguous() &&
                  x.numel() == y.numel() && x.numel() == out.numel(),
              "add_bf16_out: contiguous tensors of one size");
  const float* xp = x.data_ptr<float>();
  const at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes) {
      _mm512_storeu_ps(op + i, _mm512_add_ps(_mm512_loadu_ps(xp + i), load_bf16(yp + i, 0xFFFF)));
    }
    if (i < end) {
      const __mmask16 m = static_cast<__mmask16>((1u << (end - i)) - 1);
      const __m512 sum = _mm512_add_ps(_mm512_maskz_loadu_ps(m, xp + i), load_bf16(yp + i, m));
      _mm512_mask_storeu_ps(op + i, m, sum);
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("softmax_bf16_", &softmax_bf16_, "softmax over the rows of a 2-D bf16 tensor, in place");
  m.def("layer_norm_bf16", &layer_norm_bf16, "LayerNorm of fp32 rows, written in bf16");
  m.def("add_bf16_out", &add_bf16_out, "out = x (fp32) + y (bf16)");
  m.attr("MAX_ROW") = kMaxRow;
}
