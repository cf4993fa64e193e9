// softmax(q k^T * scale) v for bf16 inference on AVX-512 BF16 CPUs without AMX
// (bf16_attention.py): amx_attention.cpp's computation with the products from vdpbf16ps register
// blocks instead of tiles.
//
// One (sample, head) pair at a time per thread, 16 query rows at a time, everything in L1/L2:
//   1. k^T and v packed once per pair into bf16 pairs (amx_tiles.h's transpose_rows and
//      pack_values: the layout vdpbf16ps takes as it takes the tiles');
//   2. S = q k^T for 16 rows (the last rows a block of 8 where 8 or fewer remain): register
//      blocks of 8 rows x 48 keys (a q pair broadcast times 16 keys' pairs), fp32, stored to a
//      row buffer;
//   3. the softmax of the rows as the GEMM attention computes it: each score rounded to bf16 (the
//      dtype its bmm writes), times scale (a power of two: exact), fp32 softmax (exp_u20), P in
//      bf16;
//   4. O = P v for the rows, register blocks of 6 rows x 64, rounded to bf16 and written into the
//      heads-merged output (B, n, h*d): no (B*h, n, N) scores in memory, no copies of q, k, v or
//      of the output.
// q, k and v may be strided views of the qkv GEMM's output (last dim contiguous).
#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

constexpr int64_t kHead = 64;  // the head size the kernel takes (every DeiT/ViT arch shipped)
constexpr int kPairs = kHead / 2;
constexpr int kRows = 16;      // query rows a block
constexpr int kScoreRows = 8;  // rows of a scores register block (x 3 vectors: 24 accumulators)
constexpr int kOutRows = 6;    // rows of a P v register block (x 64: 24 accumulators)

inline __m512bh pair_of(const at::BFloat16* p) {  // the bf16 pair at p in every dword
  int32_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return reinterpret_cast<__m512bh>(_mm512_set1_epi32(bits));
}

// s[r][j0 + 16v ..] = sum_d q[r][d] k[j][d] for kR rows (ldq apart), kVecs vectors of 16 keys of
// kt ([32 pairs of d][Np keys] dwords), each output summed over the pairs in order of d
template <int kVecs, int kR>
inline void scores(const at::BFloat16* q, int64_t ldq, const uint32_t* kt, int64_t Np,
                   int64_t j0, float* s) {
  __m512 acc[kR][kVecs];
  for (int r = 0; r < kR; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int p = 0; p < kPairs; ++p) {
    __m512bh kv[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      kv[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(kt + p * Np + j0 + 16 * v));
    }
    for (int r = 0; r < kR; ++r) {
      const __m512bh qp = pair_of(q + r * ldq + 2 * p);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], qp, kv[v]);
    }
  }
  for (int r = 0; r < kR; ++r) {
    for (int v = 0; v < kVecs; ++v) _mm512_storeu_ps(s + r * Np + j0 + 16 * v, acc[r][v]);
  }
}

// o[r][:] = sum_j p[r][j] v[j][:] for kR rows of P (bf16, ldp apart; zero past the keys) over
// `pairs` pairs of keys of vv ([pairs][64] dwords, pack_values), summed in order of the keys
template <int kR>
inline void values(const at::BFloat16* p, int64_t ldp, const uint32_t* vv, int64_t pairs,
                   float* o) {
  __m512 acc[kR][4];
  for (int r = 0; r < kR; ++r) {
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  for (int64_t t = 0; t < pairs; ++t) {
    __m512bh vp[4];
    for (int c = 0; c < 4; ++c) {
      vp[c] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(vv + t * kHead + 16 * c));
    }
    for (int r = 0; r < kR; ++r) {
      const __m512bh pp = pair_of(p + r * ldp + 2 * t);
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pp, vp[c]);
    }
  }
  for (int r = 0; r < kR; ++r) {
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(o + r * kHead + 16 * c, acc[r][c]);
  }
}

// S for the kR rows at q (ldq apart) and every key block: blocks of 3 vectors, then 2 or 1
template <int kR>
void score_rows(const at::BFloat16* q, int64_t ldq, const uint32_t* kt, int64_t Np, float* s) {
  const int64_t nb = Np / 16;
  for (int r = 0; r < kR; r += kScoreRows) {
    const at::BFloat16* qr = q + r * ldq;
    float* sr = s + r * Np;
    int64_t b = 0;
    for (; b + 3 <= nb; b += 3) scores<3, kScoreRows>(qr, ldq, kt, Np, 16 * b, sr);
    if (nb - b == 2) scores<2, kScoreRows>(qr, ldq, kt, Np, 16 * b, sr);
    if (nb - b == 1) scores<1, kScoreRows>(qr, ldq, kt, Np, 16 * b, sr);
  }
}

// Scratch of one (sample, head) pair: its keys and values packed, a block's rows
struct Pair {
  const uint32_t* kt;  // [32 pairs of d][Np keys] dwords, keys >= N zero
  const uint32_t* vv;  // [pairs of keys][64] dwords
  int64_t N, Np, pairs;
  int nv;              // Np / 16
  float* s;            // kRows x Np scores
  at::BFloat16* p;     // kRows x Np probabilities, zero past N
  float* o;            // kRows x 64 outputs
};

// Block i of kR query rows at qb (ldq apart; query_rows: the last block ends at n, or a
// zero-padded copy in pad of fewer than kR queries) attended, its rows begin..end-1 written in
// bf16 to ob (rows ldo apart)
template <int kR>
void attend_block(const at::BFloat16* qb, int64_t ldq, int64_t n, int64_t i, at::BFloat16* pad,
                  const Pair& p, __m512 scale, at::BFloat16* ob, int64_t ldo,
                  __m512 (*regs)[kMaxVecs]) {
  static_assert(kR == 16 || kR == 8, "blocks of 16 rows, or of 8 at the end");
  const QueryRows<at::BFloat16> rows = query_rows<kR>(qb, ldq, n, i, pad, kHead);
  score_rows<kR>(rows.q, rows.ld, p.kt, p.Np, p.s);
  for (int r = 0; r < kR; r += kInterleave) {
    softmax_rows<kInterleave>(ScoreRows{p.s + r * p.Np, p.Np, scale}, p.p + r * p.Np, p.Np, p.N,
                              p.nv, regs);
  }
  if (kR == 16) {  // P v: 6 + 6 + 4 rows
    values<kOutRows>(p.p, p.Np, p.vv, p.pairs, p.o);
    values<kOutRows>(p.p + 6 * p.Np, p.Np, p.vv, p.pairs, p.o + 6 * kHead);
    values<4>(p.p + 12 * p.Np, p.Np, p.vv, p.pairs, p.o + 12 * kHead);
  } else {  // 4 + 4 rows
    values<4>(p.p, p.Np, p.vv, p.pairs, p.o);
    values<4>(p.p + 4 * p.Np, p.Np, p.vv, p.pairs, p.o + 4 * kHead);
  }
  store_rows_bf16(p.o, rows.begin, rows.end, ob + rows.first * ldo, ldo);
}

void attend_pairs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  float scale, int64_t begin, int64_t end) {
  const int64_t H = q.size(1), n = q.size(2), N = k.size(2), C = H * kHead, ldq = q.stride(2);
  const int64_t Np = (N + 15) / 16 * 16;  // score columns: key vectors of 16, zero past N
  Scratch<uint32_t> kt_buf(kPairs * Np), vv_buf(Np / 2 * kHead);
  Scratch<float> s_buf(kRows * Np), o_buf(kRows * kHead);
  Scratch<at::BFloat16> p_buf(kRows * Np), q_pad(kRows * kHead);  // P zero past N
  // P v's inner steps: pairs of keys
  const Pair p{kt_buf.data, vv_buf.data, N, Np, (N + 1) / 2, static_cast<int>(Np / kLanes),
               s_buf.data, p_buf.data, o_buf.data};
  const at::BFloat16* qp = q.data_ptr<at::BFloat16>();
  const at::BFloat16* kp = k.data_ptr<at::BFloat16>();
  const at::BFloat16* vp = v.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 regs[kInterleave][kMaxVecs];
  const int64_t full = n / kRows, rem = n % kRows;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const at::BFloat16* qb = qp + b * q.stride(0) + h * q.stride(1);
    transpose_rows(kp + b * k.stride(0) + h * k.stride(1), k.stride(2) * 2, N, kPairs, Np,
                   kt_buf.data);
    pack_values(vp + b * v.stride(0) + h * v.stride(1), v.stride(2), N, vv_buf.data);
    at::BFloat16* ob = op + b * n * C + h * kHead;  // sample b's rows, head h's columns
    for (int64_t i = 0; i < full; ++i) {
      attend_block<kRows>(qb, ldq, n, i, q_pad.data, p, vscale, ob, C, regs);
    }
    // the last rows a block of 16, or of 8 where 8 or fewer remain (198 = 12 x 16 + 6; the
    // last layer's 2 queries)
    if (rem > kRows / 2) {
      attend_block<kRows>(qb, ldq, n, full, q_pad.data, p, vscale, ob, C, regs);
    } else if (rem > 0) {
      attend_block<kRows / 2>(qb, ldq, n, 2 * full, q_pad.data, p, vscale, ob, C, regs);
    }
  }
}

}  // namespace

at::Tensor attention_avx512_bf16(at::Tensor q, at::Tensor k, at::Tensor v, double scale) {
  return attend_all_pairs(q, k, v, scale, at::kBFloat16, kHead, "attention_avx512_bf16",
                          attend_pairs);
}
