// What the tile-unit kernels (amx_*.cpp) share: the compiler check, the tile configuration,
// aligned scratch, and the row pairing and dword transpose that pack operands into the tile
// unit's pair-interleaved (VNNI) layout, which the vdpbf16ps attention (bf16_attention.cpp)
// packs into too; with the fp32 attention (fp32_attention.cpp) also the scratch, the keys'
// transpose, the choice of each block's query rows and the attention's input checks.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu_kernels.h"

#if (defined(__clang__) && __clang_major__ >= 12) || \
    (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define MMDEIT_AMX 1
#endif

#define MMDEIT_BARRIER() asm volatile("" ::: "memory")  // tile loads are asm without a clobber

namespace mmdeit_kernels {

// 64-byte aligned, zeroed scratch (tile rows are loaded and stored whole cache lines)
template <typename T>
struct Scratch {
  T* data;
  explicit Scratch(int64_t n) {
    const size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data != nullptr, "mmdeit tile kernels: out of memory");
    std::memset(data, 0, bytes);
  }
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

struct alignas(64) TileConfig {  // palette 1: 8 tiles of 16 rows x 64 bytes
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// 32 zero bf16: the row read in place of a missing one (past the last token or key)
alignas(64) inline const uint16_t kZeroRow[32] = {};

// 16 bf16 of row r0 and of row r1 -> 16 dwords (r0[c], r1[c]): the tile unit's pairs
inline __m512i pair_rows(const at::BFloat16* r0, const at::BFloat16* r1) {
  const __m512i interleave = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9,
                                              40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
                                              1, 32, 0);
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1));
  return _mm512_permutex2var_epi16(_mm512_castsi256_si512(a), interleave,
                                   _mm512_castsi256_si512(b));
}

// 16 x 16 dwords: r[i][c] -> r[c][i]
inline void transpose16x16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i+3
    r[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // lane L of row 4L' + j: the 4 rows' quarter L' of column 4L + j
    const __m512i x0 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44);
    const __m512i x1 = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xEE);
    const __m512i y0 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
    const __m512i y1 = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xEE);
    t[j] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    t[8 + j] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// Rows 0..N-1 of `dwords` dwords each (row j at src + j * ld_bytes) -> out[c * Np + j] for
// c < dwords (a multiple of 16), the rows past N in the last block of 16 zero: the attention
// kernels' k^T (fp32 values, or the tile unit's bf16 pairs).
inline void transpose_rows(const void* src, int64_t ld_bytes, int64_t N, int64_t dwords,
                           int64_t Np, void* out) {
  const char* rows = static_cast<const char*>(src);
  uint32_t* dst = static_cast<uint32_t*>(out);
  for (int64_t j0 = 0; j0 < N; j0 += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, N - j0));
    for (int64_t c0 = 0; c0 < dwords; c0 += 16) {
      __m512i r[16];
      for (int i = 0; i < 16; ++i) {
        r[i] = i < count ? _mm512_loadu_si512(rows + (j0 + i) * ld_bytes + 4 * c0)
                         : _mm512_setzero_si512();
      }
      transpose16x16(r);
      for (int c = 0; c < 16; ++c) _mm512_storeu_si512(dst + (c0 + c) * Np + j0, r[c]);
    }
  }
}

// The attention kernels' inputs: q (B, h, n, head), k and v (B, h, N, head) of `dtype`, each
// with its last dim contiguous, n > 0 and 1 to kMaxRow keys; a failed check names `name`.
inline void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   at::ScalarType dtype, int64_t head, const char* name) {
  TORCH_CHECK(q.scalar_type() == dtype && k.scalar_type() == dtype && v.scalar_type() == dtype,
              name, ": ", dtype == at::kFloat ? "fp32" : "bf16", " q, k and v");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() &&
                  q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              name, ": q (B, h, n, d), k and v (B, h, N, d)");
  TORCH_CHECK(q.size(3) == head, name, ": heads of ", head);
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, name,
              ": the last dim contiguous");
  TORCH_CHECK(q.size(2) > 0 && k.size(2) > 0 && k.size(2) <= kMaxRow, name, ": 1 to ", kMaxRow,
              " keys");
}

// out (B, n, h*head) of an attention kernel: the inputs checked, then attend(q, k, v, out, scale,
// begin, end) for the (sample, head) pairs begin..end-1 of each thread
template <typename Attend>
at::Tensor attend_all_pairs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            double scale, at::ScalarType dtype, int64_t head, const char* name,
                            Attend attend) {
  check_attention_inputs(q, k, v, dtype, head, name);
  const int64_t B = q.size(0), H = q.size(1);
  at::Tensor out = at::empty({B, q.size(2), H * head}, q.options());
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    attend(q, k, v, out, s, begin, end);
  });
  return out;
}

// An attention block's query rows: kBlock rows from row `first` (at q, ld elements apart), of
// which rows begin..end-1 are to be written.
template <typename T>
struct QueryRows {
  int64_t first, begin, end;
  const T* q;
  int64_t ld;
};

// Block i of the n query rows at qb (ld elements apart), kBlock rows a block: the last block is
// the kBlock rows before the end (its first rows written already), or, with fewer than kBlock
// queries, a zero-padded copy of them in pad (kBlock rows of `width` elements, zero past n).
template <int kBlock, typename T>
inline QueryRows<T> query_rows(const T* qb, int64_t ld, int64_t n, int64_t i, T* pad,
                               int64_t width) {
  if (n < kBlock) {
    for (int64_t r = 0; r < n; ++r) std::memcpy(pad + r * width, qb + r * ld, width * sizeof(T));
    return {0, 0, n, pad, width};
  }
  const int64_t first = std::min(i * kBlock, n - kBlock);
  return {first, i * kBlock - first, kBlock, qb + first * ld, ld};
}

// Vector j of fp32 score row r (rows ld apart) rounded to bf16 as the GEMM attention's bmm
// writes it, times scale: the bf16 attention kernels' loader for softmax_rows.
struct ScoreRows {
  const float* base;
  int64_t ld;
  __m512 scale;
  __m512 operator()(int r, int j, __mmask16 m) const {
    const __m512 s = _mm512_maskz_loadu_ps(m, base + r * ld + j * kLanes);
    return _mm512_mul_ps(bf16_to_fp32(to_bf16(s)), scale);
  }
};

// v (N x 64 bf16, rows ld apart) -> vv: [row pairs][64] dwords (v[2p][c], v[2p+1][c]), the tile
// unit's second operand for a product over v's rows; an odd N's last pair and the pairs past
// it zero (left as they are: zero in fresh Scratch)
inline void pack_values(const at::BFloat16* v, int64_t ld, int64_t N, uint32_t* vv) {
  constexpr int64_t kWidth = 64;
  const auto* zeros = reinterpret_cast<const at::BFloat16*>(kZeroRow);
  for (int64_t j = 0; j < N; j += 2) {
    const at::BFloat16* row = v + j * ld;
    for (int64_t c = 0; c < kWidth; c += 16) {
      const at::BFloat16* next = j + 1 < N ? row + ld + c : zeros;
      _mm512_storeu_si512(vv + (j / 2) * kWidth + c, pair_rows(row + c, next));
    }
  }
}

#ifdef MMDEIT_AMX

// Tile use of the two products below: 0, 1 the first operand's rows; 2, 3 the second
// operand; 4..7 the fp32 accumulators.
#define MMDEIT_ROWS_TIMES_KEYS(c, j)             \
  _tile_zero(c);                                 \
  _tile_loadd(2, kt + (j) * 16, ld_kt);          \
  _tile_dpbf16ps(c, 0, 2);                       \
  _tile_loadd(3, kt + 16 * Np + (j) * 16, ld_kt); \
  _tile_dpbf16ps(c, 1, 3);

// 16 rows of 64 bf16 (a, rows lda bytes apart) times key blocks j0..j0+count-1 (count 1 to 4)
// of kt^T, kt being [32 pairs of the 64][Np keys] dwords (transpose_rows): fp32 16 x 16 blocks
// stored to s + 16 j, rows Np fp32 apart (the attention's q k^T; its backward's dO v^T)
__attribute__((target("amx-tile,amx-bf16"))) inline void rows_times_keys(
    const at::BFloat16* a, int64_t lda, const uint32_t* kt, int64_t Np, int64_t j0,
    int64_t count, float* s) {
  const int64_t ld_kt = Np * 4;
  MMDEIT_BARRIER();
  _tile_loadd(0, a, lda);
  _tile_loadd(1, a + 32, lda);
  MMDEIT_ROWS_TIMES_KEYS(4, j0);
  if (count > 1) { MMDEIT_ROWS_TIMES_KEYS(5, j0 + 1); }
  if (count > 2) { MMDEIT_ROWS_TIMES_KEYS(6, j0 + 2); }
  if (count > 3) { MMDEIT_ROWS_TIMES_KEYS(7, j0 + 3); }
  _tile_stored(4, s + j0 * 16, ld_kt);
  if (count > 1) _tile_stored(5, s + (j0 + 1) * 16, ld_kt);
  if (count > 2) _tile_stored(6, s + (j0 + 2) * 16, ld_kt);
  if (count > 3) _tile_stored(7, s + (j0 + 3) * 16, ld_kt);  // tile stores clobber memory
}

#undef MMDEIT_ROWS_TIMES_KEYS

// 16 rows of 32 * steps bf16 (a, rows lda bytes apart) times vv ([pairs][64] dwords,
// pack_values): o (16 x 64 fp32, rows 64 apart) (the attention's P v; its backward's dS k,
// dS^T q and P^T dO)
__attribute__((target("amx-tile,amx-bf16"))) inline void rows_times_values(
    const at::BFloat16* a, int64_t lda, const uint32_t* vv, int64_t steps, float* o) {
  constexpr int64_t ld_v = 64 * 4;
  MMDEIT_BARRIER();
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (int64_t s = 0; s < steps; ++s) {  // 32 rows of vv at a time
    const uint32_t* vs = vv + 16 * s * 64;
    _tile_loadd(0, a + 32 * s, lda);
    _tile_loadd(2, vs, ld_v);
    _tile_dpbf16ps(4, 0, 2);
    _tile_loadd(3, vs + 16, ld_v);
    _tile_dpbf16ps(5, 0, 3);
    _tile_loadd(2, vs + 32, ld_v);
    _tile_dpbf16ps(6, 0, 2);
    _tile_loadd(3, vs + 48, ld_v);
    _tile_dpbf16ps(7, 0, 3);
  }
  _tile_stored(4, o, ld_v);
  _tile_stored(5, o + 16, ld_v);
  _tile_stored(6, o + 32, ld_v);
  _tile_stored(7, o + 48, ld_v);
  MMDEIT_BARRIER();
}

#endif  // MMDEIT_AMX

// Rows begin..end-1 of o (16 x 64 fp32, rows 64 apart) in bf16 to dst + r * ld
inline void store_rows_bf16(const float* o, int64_t begin, int64_t end, at::BFloat16* dst,
                            int64_t ld) {
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t c = 0; c < 64; c += kLanes) {
      store_bf16(dst + r * ld + c, _mm512_loadu_ps(o + r * 64 + c), 0xFFFF);
    }
  }
}

}  // namespace mmdeit_kernels
