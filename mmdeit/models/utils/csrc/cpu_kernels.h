// What the kernels of cpu_kernels.cpp and the tile-unit ones (amx_*.cpp) share: bf16 loads and
// stores of fp32 vectors and the softmax of rows held in registers (AVX-512 BF16).
#pragma once

// ATen's tensor and the few ops used, not <torch/extension.h>: its headers took ~28 s of each
// source's compile (this module's build 2.4 min on 2 cores, now ~45 s); pybind11 and PyTorch's
// tensor casters only in bindings.cpp; <ATen/Parallel.h> where parallel_for is used
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <immintrin.h>

#include <cmath>
#include <vector>

namespace mmdeit_kernels {

using FloatVec = at::vec::Vectorized<float>;
constexpr int kLanes = 16;                      // fp32 lanes of a __m512
constexpr int kMaxVecs = 64;                    // a row of <= 1024 elements: registers/stack
constexpr int64_t kMaxRow = kMaxVecs * kLanes;  // cpu_kernels.MAX_ROW
constexpr int kInterleave = 4;                  // rows a thread computes at once

inline __mmask16 lanes(int64_t n, int j, int nv) {  // the lanes of vector j of a row of n
  return (j == nv - 1 && n % kLanes) ? static_cast<__mmask16>((1u << (n % kLanes)) - 1) : 0xFFFF;
}

inline __m512 bf16_to_fp32(__m256i bits) {  // a shift
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

inline __m512 load_bf16(const at::BFloat16* p, __mmask16 m) {
  return bf16_to_fp32(_mm256_maskz_loadu_epi16(m, p));
}

inline __m256i to_bf16(__m512 v) {  // round to nearest even
  return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
}

inline void store_bf16(at::BFloat16* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, to_bf16(v));
}

// Vector j of row r of bf16 rows ld apart, in fp32: a loader for softmax_rows.
struct Bf16Rows {
  const at::BFloat16* base;
  int64_t ld;
  __m512 operator()(int r, int j, __mmask16 m) const {
    return load_bf16(base + r * ld + j * kLanes, m);
  }
};

// Softmax of kRows rows of N at once, each held in v[r]: the rows' passes interleave, so one row's
// reductions (max, sum) wait while the others compute (1.6x one row at a time, measured).
// load(r, j, m) gives vector j of row r in fp32 (lanes m); the result goes to out + r * ld in bf16.
template <int kRows, typename Load>
inline void softmax_rows(Load load, at::BFloat16* out, int64_t ld, int64_t N, int nv,
                         __m512 (*v)[kMaxVecs]) {
  __m512 vmax[kRows], vsum[kRows], max[kRows], inv[kRows];
  for (int r = 0; r < kRows; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(N, j, nv);
    for (int r = 0; r < kRows; ++r) {
      v[r][j] = load(r, j, m);
      vmax[r] = _mm512_mask_max_ps(vmax[r], m, vmax[r], v[r][j]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    max[r] = _mm512_set1_ps(_mm512_reduce_max_ps(vmax[r]));
    vsum[r] = _mm512_setzero_ps();
  }
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(N, j, nv);
    for (int r = 0; r < kRows; ++r) {
      v[r][j] = FloatVec(_mm512_sub_ps(v[r][j], max[r])).exp_u20();
      vsum[r] = _mm512_mask_add_ps(vsum[r], m, vsum[r], v[r][j]);
    }
  }
  for (int r = 0; r < kRows; ++r) inv[r] = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(vsum[r]));
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(N, j, nv);
    for (int r = 0; r < kRows; ++r) {
      store_bf16(out + r * ld + j * kLanes, _mm512_mul_ps(v[r][j], inv[r]), m);
    }
  }
}

// kept's values: stochastic depth's kept samples of a batch of B, each once (a backward writes,
// never adds, a sample's rows); empty without kept.
inline std::vector<int64_t> kept_samples(const c10::optional<at::Tensor>& kept, int64_t B,
                                         const char* name) {
  if (!kept.has_value()) return {};
  TORCH_CHECK(kept->scalar_type() == at::kLong && kept->dim() == 1, name,
              ": kept a 1-D int64 tensor of samples");
  const at::Tensor k = kept->contiguous();
  std::vector<int64_t> index(k.data_ptr<int64_t>(), k.data_ptr<int64_t>() + k.numel());
  std::vector<bool> seen(B, false);
  for (int64_t i : index) {
    TORCH_CHECK(i >= 0 && i < B && !seen[i], name, ": kept samples distinct and within the batch");
    seen[i] = true;
  }
  return index;
}

// The rows of x (B, ..., C) by sample: with kept (b,) int64, sample s of an output is sample
// kept[s] of x (kept_samples); without, all of x is one sample (out_rows() = x's rows).
struct SampleRows {
  int64_t samples, per_sample;
  std::vector<int64_t> index;  // kept's values, empty without it
  SampleRows(const at::Tensor& x, const c10::optional<at::Tensor>& kept, const char* name) {
    const int64_t R = x.numel() / x.size(-1);
    if (!kept.has_value()) {
      samples = 1;
      per_sample = R;
      return;
    }
    TORCH_CHECK(x.dim() >= 2, name,
                ": kept a 1-D int64 tensor of samples of an x of 2 or more dims");
    const int64_t B = x.size(0);
    index = kept_samples(kept, B, name);
    samples = static_cast<int64_t>(index.size());
    per_sample = B > 0 ? R / B : 0;
  }
  int64_t out_rows() const { return samples * per_sample; }
  int64_t source(int64_t s) const {  // the first x row of output sample s
    return (index.empty() ? s : index[s]) * per_sample;
  }
};

}  // namespace mmdeit_kernels

// cpu_kernels.cpp
void softmax_bf16_(at::Tensor x);
void add_bf16_out(at::Tensor x, at::Tensor y, at::Tensor out);
at::Tensor split_heads_bf16(at::Tensor t, int64_t parts, int64_t heads);
at::Tensor layer_norm_bf16(at::Tensor x, at::Tensor weight, at::Tensor bias, double eps,
                           c10::optional<at::Tensor> stats, c10::optional<at::Tensor> kept);

// layer_norm_grad.cpp
std::vector<at::Tensor> layer_norm_backward_bf16(at::Tensor grad, at::Tensor x, at::Tensor stats,
                                                 at::Tensor weight,
                                                 c10::optional<at::Tensor> kept);

// drop_add.cpp
at::Tensor drop_add_bf16(at::Tensor identity, at::Tensor branch, c10::optional<at::Tensor> kept,
                         double alpha);
at::Tensor scaled_rows_bf16(at::Tensor grad, c10::optional<at::Tensor> kept, double alpha);

// amx_attention.cpp
at::Tensor attention_bf16(at::Tensor q, at::Tensor k, at::Tensor v, double scale,
                          c10::optional<at::Tensor> probs);
bool amx_attention_ready();

// amx_attention_grad.cpp
void attention_backward_bf16(at::Tensor grad, at::Tensor q, at::Tensor k, at::Tensor v,
                             at::Tensor probs, double scale, at::Tensor dq, at::Tensor dk,
                             at::Tensor dv);

// bf16_attention.cpp
at::Tensor attention_avx512_bf16(at::Tensor q, at::Tensor k, at::Tensor v, double scale);

// fp32_attention.cpp
at::Tensor attention_fp32(at::Tensor q, at::Tensor k, at::Tensor v, double scale);

// amx_linear.cpp
at::Tensor amx_pack_weight(at::Tensor w);
at::Tensor amx_linear_bf16(at::Tensor x, at::Tensor packed, c10::optional<at::Tensor> bias,
                           bool gelu, c10::optional<at::Tensor> shortcut, bool inplace);

// amx_weight_grad.cpp
std::vector<at::Tensor> amx_weight_grad_bf16(at::Tensor x, at::Tensor dy, bool bias);
