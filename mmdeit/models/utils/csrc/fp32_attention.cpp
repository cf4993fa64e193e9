// softmax(q k^T * scale) v for fp32 inference on AVX-512 CPUs (fp32_attention.py).
//
// One (sample, head) pair at a time per thread, kRows query rows at a time, everything in L1/L2:
//   1. k^T packed once per pair (64 x Np fp32, keys past N zero: amx_tiles.h's transpose_rows);
//   2. S = q k^T * scale for kRows rows (the last rows a block of 6 where 6 or fewer remain):
//      register blocks of kRows x 32 keys (FMA on broadcast q), an odd count of 16-key vectors
//      ending with 48 keys in blocks of 6 rows; the rows' maxima taken as the scores are stored;
//   3. P = exp(S - max) in place (exp_u20 of cpu_kernels.h, the fast exp PyTorch's CPU flash
//      attention uses too), and each row's sum;
//   4. O = P v / sum for the rows, register blocks of 6 rows x 64, written into the heads-merged
//      output (B, n, h*d): no (B*h, n, N) scores in memory, no copies of q, v or of the output.
// q, k and v may be strided views of the qkv GEMM's output (last dim contiguous).
#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

constexpr int64_t kHead = 64;  // the head size the kernel takes (every DeiT/ViT arch shipped)
constexpr int kRows = 12;      // query rows a block: the scores' register block is kRows x 32
constexpr int kHalf = 6;       // rows of the last block where 6 or fewer remain
constexpr int kOutRows = 6;    // rows of O = P v's register block (x 64: 24 accumulators)
static_assert(kRows % kHalf == 0 && kHalf % kOutRows == 0 && kHalf % 6 == 0,
              "blocks of 6 within 12, whole P v groups and 48-key blocks of 6 rows");

// s[r][j0 + 16v ..] = scale * sum_d q[r][d] kt[d][j0 + 16v ..]: kR rows, kVecs vectors of keys;
// rmax[r] takes the lane-wise max of row r's scores of keys < N
template <int kVecs, int kR>
inline void scores(const float* q, int64_t ldq, const float* kt, int64_t Np, int64_t N,
                   int64_t j0, float* s, __m512 scale, __m512* rmax) {
  __m512 acc[kR][kVecs];
  for (int r = 0; r < kR; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < kHead; ++d) {
    __m512 kv[kVecs];
    for (int v = 0; v < kVecs; ++v) kv[v] = _mm512_loadu_ps(kt + d * Np + j0 + 16 * v);
    for (int r = 0; r < kR; ++r) {
      const __m512 qb = _mm512_set1_ps(q[r * ldq + d]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_fmadd_ps(qb, kv[v], acc[r][v]);
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    const int64_t left = N - j0 - 16 * v;  // keys of this vector below N
    const __mmask16 m = left >= kLanes ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    for (int r = 0; r < kR; ++r) {
      const __m512 val = _mm512_mul_ps(acc[r][v], scale);
      _mm512_storeu_ps(s + r * Np + j0 + 16 * v, val);
      rmax[r] = _mm512_mask_max_ps(rmax[r], m, rmax[r], val);
    }
  }
}

// s[r][j] = exp(s[r][j] - max_r) for the kR rows' N keys in place (cpu_kernels' exp_u20), the
// rows' maxima from rmax (lane-wise), 1 / sum_j s[r][j] into inv[r]: P v divides by the sum
template <int kR>
inline void exp_rows(float* s, int64_t Np, int64_t N, int nv, const __m512* rmax, float* inv) {
  __m512 max[kR], sum[kR];
  for (int r = 0; r < kR; ++r) {
    max[r] = _mm512_set1_ps(_mm512_reduce_max_ps(rmax[r]));
    sum[r] = _mm512_setzero_ps();
  }
  for (int j = 0; j < nv; ++j) {
    const __mmask16 m = lanes(N, j, nv);
    for (int r = 0; r < kR; ++r) {
      float* row = s + r * Np + j * kLanes;
      const __m512 e = FloatVec(_mm512_sub_ps(_mm512_loadu_ps(row), max[r])).exp_u20();
      sum[r] = _mm512_mask_add_ps(sum[r], m, sum[r], e);
      _mm512_mask_storeu_ps(row, m, e);
    }
  }
  for (int r = 0; r < kR; ++r) inv[r] = 1.f / _mm512_reduce_add_ps(sum[r]);
}

// o[r][:] = inv[r] * sum_j p[r][j] v[j][:] for kOutRows rows (p rows ldp apart, v rows ldv apart)
inline void values(const float* p, int64_t ldp, const float* v, int64_t ldv, int64_t N,
                   const float* inv, float* o) {
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
    const __m512 ir = _mm512_set1_ps(inv[r]);
    for (int c = 0; c < 4; ++c) {
      _mm512_storeu_ps(o + r * kHead + 16 * c, _mm512_mul_ps(acc[r][c], ir));
    }
  }
}

// One (sample, head) pair's keys and values, packed or as views, and the scratch rows.
struct Pair {
  const float* kt;  // k^T [64][Np], keys >= N zero
  const float* v;   // rows ldv apart
  int64_t ldv, N, Np;
  int nv;           // Np / 16
  float* s;         // kRows x Np scores, then probabilities
  float* o;         // kRows x 64 outputs
};

// O = softmax(q k^T * scale) v for kR query rows at q (ldq apart) into p.o.
template <int kR>
void attend_rows(const float* q, int64_t ldq, const Pair& p, __m512 scale) {
  __m512 rmax[kR];
  for (int r = 0; r < kR; ++r) rmax[r] = _mm512_set1_ps(-INFINITY);
  // S: blocks of 32 keys; an odd count of vectors (>= 3) ends with 48 keys in blocks of 6 rows
  // (12 rows x 16 keys ran at ~40 % of the 32-key blocks' speed)
  const int64_t j32 = p.nv >= 3 && p.nv % 2 ? p.Np - 48 : p.Np - p.Np % 32;
  int64_t j0 = 0;
  for (; j0 < j32; j0 += 32) scores<2, kR>(q, ldq, p.kt, p.Np, p.N, j0, p.s, scale, rmax);
  if (p.Np - j0 == 48) {
    for (int r = 0; r < kR; r += 6) {
      scores<3, 6>(q + r * ldq, ldq, p.kt, p.Np, p.N, j0, p.s + r * p.Np, scale, rmax + r);
    }
  } else if (j0 < p.Np) {  // one vector of keys
    scores<1, kR>(q, ldq, p.kt, p.Np, p.N, j0, p.s, scale, rmax);
  }
  float inv[kR];  // the softmax without its division, in place
  exp_rows<kR>(p.s, p.Np, p.N, p.nv, rmax, inv);
  for (int r = 0; r < kR; r += kOutRows) {
    values(p.s + r * p.Np, p.Np, p.v, p.ldv, p.N, inv + r, p.o + r * kHead);
  }
}

// Block i of kBlock query rows at qb (ldq apart; query_rows: the last block ends at n, or a
// zero-padded copy in pad of fewer than kBlock queries) attended, its rows begin..end-1 copied
// to ob (rows ldo apart).
template <int kBlock>
void attend_block(const float* qb, int64_t ldq, int64_t n, int64_t i, float* pad, const Pair& p,
                  __m512 scale, float* ob, int64_t ldo) {
  const QueryRows<float> rows = query_rows<kBlock>(qb, ldq, n, i, pad, kHead);
  attend_rows<kBlock>(rows.q, rows.ld, p, scale);
  for (int64_t r = rows.begin; r < rows.end; ++r) {
    std::memcpy(ob + (rows.first + r) * ldo, p.o + r * kHead, kHead * sizeof(float));
  }
}

void attend_pairs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  float scale, int64_t begin, int64_t end) {
  const int64_t H = q.size(1), n = q.size(2), N = k.size(2), C = H * kHead, ldq = q.stride(2);
  const int64_t nv = (N + kLanes - 1) / kLanes, Np = nv * kLanes;
  Scratch<float> kt_buf(kHead * Np), s_buf(kRows * Np), o_buf(kRows * kHead), q_pad(kRows * kHead);
  Pair p{kt_buf.data, nullptr, v.stride(2), N, Np, static_cast<int>(nv), s_buf.data, o_buf.data};
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const __m512 vscale = _mm512_set1_ps(scale);
  const int64_t full = n / kRows, rem = n % kRows;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const float* qb = qp + b * q.stride(0) + h * q.stride(1);
    p.v = vp + b * v.stride(0) + h * v.stride(1);
    transpose_rows(kp + b * k.stride(0) + h * k.stride(1), k.stride(2) * 4, N, kHead, Np,
                   kt_buf.data);  // k^T [64][Np], keys >= N zero
    float* ob = op + b * n * C + h * kHead;  // sample b's rows, head h's columns
    for (int64_t i = 0; i < full; ++i) {
      attend_block<kRows>(qb, ldq, n, i, q_pad.data, p, vscale, ob, C);
    }
    if (rem > kHalf) {  // the last rows a block of 12, or of 6 where 6 or fewer remain
      attend_block<kRows>(qb, ldq, n, full, q_pad.data, p, vscale, ob, C);
    } else if (rem > 0) {
      attend_block<kHalf>(qb, ldq, n, full * kRows / kHalf, q_pad.data, p, vscale, ob, C);
    }
  }
}

}  // namespace

at::Tensor attention_fp32(at::Tensor q, at::Tensor k, at::Tensor v, double scale) {
  return attend_all_pairs(q, k, v, scale, at::kFloat, kHead, "attention_fp32", attend_pairs);
}
