// Kernels for bf16 autocast inference on AVX-512 BF16 CPUs (mmdeit/models/utils/cpu_kernels.py);
// the attention on the tile unit of AMX CPUs is amx_attention.cpp's.
//
// Each computes in fp32 and rounds to bf16 once, as the ATen ops they replace do; the softmax and
// the LayerNorm in one pass over rows held in registers (up to kMaxRow elements; 4 rows at once):
//   softmax_bf16_    softmax over the last dim of a (R, N) bf16 tensor, in place (exp_u20)
//   layer_norm_bf16  LayerNorm of a (..., C) fp32 tensor, written in bf16 (each row's mean and
//                    1/std also written where asked: for layer_norm_grad.cpp's backward; of
//                    some samples only where asked: stochastic depth's kept samples)
//   add_bf16_out     out = x (fp32) + y (bf16), out may be x
//   split_heads_bf16 q, k, v of the qkv GEMM's (B, N, 3C) output, each (B, h, N, d) contiguous
#include <ATen/Parallel.h>

#include <cstring>

#include "cpu_kernels.h"

using namespace mmdeit_kernels;

void softmax_bf16_(at::Tensor x) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() == 2,
              "softmax_bf16_: a contiguous 2-D bf16 tensor");
  const int64_t R = x.size(0), N = x.size(1);
  TORCH_CHECK(N > 0 && N <= kMaxRow, "softmax_bf16_: rows of 1 to ", kMaxRow, " elements");
  at::BFloat16* base = x.data_ptr<at::BFloat16>();
  const int nv = static_cast<int>((N + kLanes - 1) / kLanes);
  const int64_t groups = (R + kInterleave - 1) / kInterleave;
  at::parallel_for(0, groups, 16, [&](int64_t begin, int64_t end) {
    __m512 v[kInterleave][kMaxVecs];  // 16 KiB of stack
    for (int64_t g = begin; g < end; ++g) {
      const int64_t r0 = g * kInterleave;
      if (r0 + kInterleave <= R) {
        softmax_rows<kInterleave>(Bf16Rows{base + r0 * N, N}, base + r0 * N, N, N, nv, v);
      } else {  // the last rows
        for (int64_t r = r0; r < R; ++r) {
          softmax_rows<1>(Bf16Rows{base + r * N, N}, base + r * N, N, N, nv, v);
        }
      }
    }
  });
}

namespace {

// LayerNorm of kRows rows at once (interleaved as the softmax's), written in bf16; each row's
// mean and 1/std to stats (2 floats a row) unless it is null.
template <int kRows>
void layer_norm_rows(const float* x, at::BFloat16* y, const float* w, const float* b, int64_t C,
                     int nv, double eps, __m512 (*v)[kMaxVecs], float* stats) {
  __m512 vsum[kRows], vsq[kRows], mean[kRows], rstd[kRows];
  for (int r = 0; r < kRows; ++r) vsum[r] = vsq[r] = _mm512_setzero_ps();
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(C, j, nv);
    for (int r = 0; r < kRows; ++r) {
      v[r][j] = _mm512_maskz_loadu_ps(m, x + r * C + j * kLanes);
      vsum[r] = _mm512_add_ps(vsum[r], v[r][j]);
    }
  }
  for (int r = 0; r < kRows; ++r) mean[r] = _mm512_set1_ps(_mm512_reduce_add_ps(vsum[r]) / C);
  for (int j = 0; j < nv; ++j) {  // two passes: the variance of the centred values
    const __mmask16 m = lanes(C, j, nv);
    for (int r = 0; r < kRows; ++r) {
      const __m512 d = _mm512_maskz_sub_ps(m, v[r][j], mean[r]);
      vsq[r] = _mm512_fmadd_ps(d, d, vsq[r]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    const float var = _mm512_reduce_add_ps(vsq[r]) / C;
    rstd[r] = _mm512_set1_ps(1.f / std::sqrt(var + static_cast<float>(eps)));
    if (stats != nullptr) {
      stats[2 * r] = _mm512_cvtss_f32(mean[r]);
      stats[2 * r + 1] = _mm512_cvtss_f32(rstd[r]);
    }
  }
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(C, j, nv);
    const __m512 wj = _mm512_maskz_loadu_ps(m, w + j * kLanes);
    const __m512 bj = _mm512_maskz_loadu_ps(m, b + j * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(v[r][j], mean[r]), rstd[r]);
      store_bf16(y + r * C + j * kLanes, _mm512_fmadd_ps(normed, wj, bj), m);
    }
  }
}

}  // namespace

at::Tensor layer_norm_bf16(at::Tensor x, at::Tensor weight, at::Tensor bias, double eps,
                           c10::optional<at::Tensor> stats, c10::optional<at::Tensor> kept) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1,
              "layer_norm_bf16: a contiguous fp32 tensor");
  const int64_t C = x.size(-1), R = C ? x.numel() / C : 0;
  TORCH_CHECK(C > 0 && C <= kMaxRow, "layer_norm_bf16: rows of 1 to ", kMaxRow, " elements");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && bias.is_contiguous() && weight.numel() == C &&
                  bias.numel() == C,
              "layer_norm_bf16: contiguous fp32 weight and bias of the last dim's size");
  // the rows of samples kept[s] of x (B, ..., C) -> sample s of y; without kept, all of x
  const SampleRows rows(x, kept, "layer_norm_bf16");
  if (stats.has_value()) {
    TORCH_CHECK(stats->scalar_type() == at::kFloat && stats->is_contiguous() &&
                    stats->dim() == 2 && stats->size(0) == rows.out_rows() && stats->size(1) == 2,
                "layer_norm_bf16: stats a contiguous fp32 (rows, 2) tensor");
  }
  float* sp = stats.has_value() ? stats->data_ptr<float>() : nullptr;
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = kept.has_value() ? rows.samples : shape[0];
  at::Tensor y = at::empty(shape, x.options().dtype(at::kBFloat16));
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const int nv = static_cast<int>((C + kLanes - 1) / kLanes);
  const int64_t per = (rows.per_sample + kInterleave - 1) / kInterleave;  // groups a sample
  at::parallel_for(0, rows.samples * per, 8, [&](int64_t begin, int64_t end) {
    __m512 v[kInterleave][kMaxVecs];
    for (int64_t g = begin; g < end; ++g) {
      const int64_t s = g / per, r0 = (g % per) * kInterleave;
      const int64_t count = std::min<int64_t>(kInterleave, rows.per_sample - r0);
      const int64_t src = rows.source(s) + r0, dst = s * rows.per_sample + r0;
      if (count == kInterleave) {
        layer_norm_rows<kInterleave>(xp + src * C, yp + dst * C, wp, bp, C, nv, eps, v,
                                     sp == nullptr ? nullptr : sp + 2 * dst);
      } else {  // a sample's last rows
        for (int64_t r = 0; r < count; ++r) {
          layer_norm_rows<1>(xp + (src + r) * C, yp + (dst + r) * C, wp, bp, C, nv, eps, v,
                             sp == nullptr ? nullptr : sp + 2 * (dst + r));
        }
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

at::Tensor split_heads_bf16(at::Tensor t, int64_t parts, int64_t heads) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.is_contiguous() && t.dim() == 3,
              "split_heads_bf16: a contiguous (B, N, parts*C) bf16 tensor");
  const int64_t B = t.size(0), N = t.size(1), width = t.size(2);
  TORCH_CHECK(parts > 0 && heads > 0 && width % (parts * heads) == 0,
              "split_heads_bf16: the last dim must split into parts x heads");
  const int64_t d = width / (parts * heads);
  at::Tensor out = at::empty({parts, B, heads, N, d}, t.options());
  const at::BFloat16* src = t.data_ptr<at::BFloat16>();
  at::BFloat16* dst = out.data_ptr<at::BFloat16>();
  const size_t bytes = d * sizeof(at::BFloat16);
  at::parallel_for(0, B * N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {  // a token: parts*heads pieces of d
      const int64_t b = row / N, n = row % N;
      const at::BFloat16* in = src + row * width;
      for (int64_t p = 0; p < parts; ++p) {
        for (int64_t h = 0; h < heads; ++h) {
          at::BFloat16* o = dst + (((p * B + b) * heads + h) * N + n) * d;
          std::memcpy(o, in + (p * heads + h) * d, bytes);
        }
      }
    }
  });
  return out;
}
