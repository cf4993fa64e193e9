// What the tile-unit kernels (amx_*.cpp) share: the compiler check, the tile configuration,
// aligned scratch, and the row pairing and dword transpose that pack operands into the tile
// unit's pair-interleaved (VNNI) layout; with the fp32 attention (fp32_attention.cpp) also the
// scratch, the keys' transpose and the choice of each block's query rows.
#pragma once

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

}  // namespace mmdeit_kernels
