// softmax(q k^T * scale) v for fp32 inference on AVX-512 CPUs (fp32_attention.py).
//
// One (sample, head) pair at a time per thread, kRows query rows at a time, everything in L1/L2:
//   1. k^T packed once per pair (64 x Np fp32, keys past N zero: amx_tiles.h's transpose_rows);
//   2. S = q k^T * scale for kRows rows: register blocks of kRows x 32 keys (FMA on broadcast q);
//   3. their softmax in place (cpu_kernels' fp32 softmax: exp_u20, the fast exp PyTorch's CPU flash
//      attention uses too);
//   4. O = P v for the rows, register blocks of 6 rows x 64, written into the heads-merged output
//      (B, n, h*d): no (B*h, n, N) scores in memory, no copies of q, v or of the output.
// q, k and v may be strided views of the qkv GEMM's output (last dim contiguous).
#include <ATen/Parallel.h>

#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

constexpr int64_t kHead = 64;  // the head size the kernel takes (every DeiT/ViT arch shipped)
constexpr int kRows = 12;      // query rows a block: the scores' register block is kRows x 32
constexpr int kOutRows = 6;    // rows of O = P v's register block (x 64: 24 accumulators)
static_assert(kRows % kInterleave == 0 && kRows % kOutRows == 0, "whole softmax and P v groups");

// s[r][j0 + 16v ..] = scale * sum_d q[r][d] kt[d][j0 + 16v ..]: kRows rows, kVecs vectors of keys
template <int kVecs>
inline void scores(const float* q, int64_t ldq, const float* kt, int64_t Np, int64_t j0, float* s,
                   __m512 scale) {
  __m512 acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < kHead; ++d) {
    __m512 kv[kVecs];
    for (int v = 0; v < kVecs; ++v) kv[v] = _mm512_loadu_ps(kt + d * Np + j0 + 16 * v);
    for (int r = 0; r < kRows; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * ldq + d]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_ps(qb, kv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int v = 0; v < kVecs; ++v) {
      _mm512_storeu_ps(s + r * Np + j0 + 16 * v, _mm512_mul_ps(acc[r][v], scale));
    }
  }
}

// o[r][:] = sum_j p[r][j] v[j][:] for kOutRows rows (p rows ldp apart, v rows ldv apart)
inline void values(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t N, float* o) {
  __m512 acc[kOutRows][4];
  for (int r = 0; r < kOutRows; ++r) {
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < N; ++j) {
    __m512 vv[4];
    for (int c = 0; c < 4; ++c) vv[c] = _mm512_loadu_ps(v + j * ldv + 16 * c);
    for (int r = 0; r < kOutRows; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * ldp + j]);
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_fmadd_ps(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < kOutRows; ++r) {
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + r * kHead + 16 * c, acc[r][c]);
  }
}

// Vector j of score row r, fp32, as stored.
struct FloatRows {
  const float* base;
  int64_t ld;
  __m512 operator()(int r, int j, __mmask16 m) const {
    return _mm512_maskz_loadu_ps(m, base + r * ld + j * kLanes);
  }
};

void attend_pairs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  float scale, int64_t begin, int64_t end) {
  const int64_t H = q.size(1), n = q.size(2), N = k.size(2), C = H * kHead;
  const int64_t nv = (N + kLanes - 1) / kLanes, Np = nv * kLanes;
  const int nvi = static_cast<int>(nv);
  Scratch<float> kt_buf(kHead * Np), s_buf(kRows * Np), o_buf(kRows * kHead), q_pad(kRows * kHead);
  float* kt = kt_buf.data;
  float* s = s_buf.data;
  float* ob = o_buf.data;
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 regs[kInterleave][kMaxVecs];
  const int64_t blocks = (n + kRows - 1) / kRows;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const float* qb = qp + b * q.stride(0) + h * q.stride(1);
    const float* vb = vp + b * v.stride(0) + h * v.stride(1);
    // k^T: [64][Np], keys >= N zero
    transpose_rows(kp + b * k.stride(0) + h * k.stride(1), k.stride(2) * 4, N, kHead, Np, kt);
    for (int64_t i = 0; i < blocks; ++i) {
      // rows kRows*i.. of q (query_rows: the last block ends at n)
      const QueryRows<float> rows = query_rows<kRows>(qb, q.stride(2), n, i, q_pad.data, kHead);
      int64_t j0 = 0;
      for (; j0 + 32 <= Np; j0 += 32) scores<2>(rows.q, rows.ld, kt, Np, j0, s, vscale);
      if (j0 < Np) scores<1>(rows.q, rows.ld, kt, Np, j0, s, vscale);
      for (int r = 0; r < kRows; r += kInterleave) {  // in place
        softmax_rows<kInterleave>(FloatRows{s + r * Np, Np}, s + r * Np, Np, N, nvi, regs);
      }
      for (int r = 0; r < kRows; r += kOutRows) {
        values(s + r * Np, Np, vb, v.stride(2), N, ob + r * kHead);
      }
      for (int64_t r = rows.begin; r < rows.end; ++r) {  // into (B, n, h*d)
        std::memcpy(op + (b * n + rows.first + r) * C + h * kHead, ob + r * kHead,
                    kHead * sizeof(float));
      }
    }
  }
}

}  // namespace

at::Tensor attention_fp32(at::Tensor q, at::Tensor k, at::Tensor v, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat,
              "attention_fp32: fp32 q, k and v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() &&
                  q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention_fp32: q (B, h, n, d), k and v (B, h, N, d)");
  TORCH_CHECK(q.size(3) == kHead, "attention_fp32: heads of ", kHead);
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "attention_fp32: the last dim contiguous");
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), N = k.size(2);
  TORCH_CHECK(n > 0 && N > 0 && N <= kMaxRow, "attention_fp32: 1 to ", kMaxRow, " keys");
  at::Tensor out = at::empty({B, n, H * kHead}, q.options());
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    attend_pairs(q, k, v, out, s, begin, end);
  });
  return out;
}
