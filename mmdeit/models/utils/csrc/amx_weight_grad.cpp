// The weight and bias gradients of a bf16 linear on the tile unit of AMX CPUs (amx_linear_grad.py):
//   dW = dy^T x (C_out x C_in) and db = dy's column sums, both fp32, from x (M x C_in) and
//   dy (M x C_out) bf16, the sums over the M tokens in fp32.
//
// oneDNN runs dy^T x (a transposed operand, a long inner dim) at 950-1,250 GFLOP/s on 2 cores
// where the forward's shapes run at 2,400-3,200 (measured, DeiT-S at batch 32). Here C = a^T b
// with a the narrower of x and dy (R columns) and b the other (S columns): dW is C, or C^T when
// a is x. Each thread takes a range of C's columns and goes through the tokens in chunks:
//   1. the chunk of b (its columns) packed into pair-interleaved (VNNI) 16 x 32 tiles: two
//      token rows interleaved, as the tile unit's second operand wants them;
//   2. the chunk of a packed as the first operand, a^T's rows: the same interleave, then a
//      16 x 16 dword transpose;
//   3. C's 32 x 32 blocks (2 x 2 fp32 accumulator tiles) loaded, advanced over the chunk's
//      tokens, stored; C's columns in panels that stay in L2 with the packed chunks; after the
//      last chunk C^T's blocks go out through a dword transpose where dW is C^T.
// db is summed while dy's rows are packed (it is a or b), in fp32, instead of a pass of its own.
// (Packing the next chunk between the tile instructions was tried: 1.5x slower, measured.)
#include <ATen/Parallel.h>

#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

#ifdef MMDEIT_AMX

constexpr int64_t kChunkRows = 256;         // tokens packed at a time (a multiple of 32)
constexpr int64_t kPanelBytes = 5 << 18;    // C's columns per panel: R x panel fp32 in 1.25 MiB

struct Rows {  // token rows m0..m0+count of a (M x cols) bf16 matrix, rows ld apart
  const at::BFloat16* base;
  int64_t ld, m0, count;
  const at::BFloat16* row(int64_t i, int64_t col) const {
    return i < count ? base + (m0 + i) * ld + col : reinterpret_cast<const at::BFloat16*>(kZeroRow);
  }
};

// the fp32 sum of a's 16 bf16 and b's 16 bf16 added to sum
inline __m512 add_rows(__m512 sum, const at::BFloat16* r0, const at::BFloat16* r1) {
  const __m512 a = bf16_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0)));
  const __m512 b = bf16_to_fp32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1)));
  return _mm512_add_ps(sum, _mm512_add_ps(a, b));
}

// columns c0..c0+16*blocks of the chunk -> per 16-column block and 32-token step, a 16 x 32 tile
// of pairs (row p: tokens 2p, 2p+1 of the step, interleaved): [block][step][16][32] bf16; the
// columns' sums added to sums (16*blocks fp32) unless it is null
inline void pack_pairs(const Rows& rows, int64_t c0, int64_t blocks, int64_t steps,
                       at::BFloat16* out, float* sums) {
  for (int64_t s = 0; s < steps; ++s) {  // along the rows: the order they are in memory
    for (int p = 0; p < 16; ++p) {
      const int64_t i = 32 * s + 2 * p;
      const at::BFloat16* r0 = rows.row(i, c0);
      const at::BFloat16* r1 = rows.row(i + 1, c0);
      const int64_t step0 = i < rows.count ? 16 : 0, step1 = i + 1 < rows.count ? 16 : 0;
      for (int64_t j = 0; j < blocks; ++j) {
        _mm512_store_si512(out + (j * steps + s) * 512 + 32 * p,
                           pair_rows(r0 + j * step0, r1 + j * step1));
        if (sums != nullptr) {
          float* sum = sums + 16 * j;
          _mm512_store_ps(sum, add_rows(_mm512_load_ps(sum), r0 + j * step0, r1 + j * step1));
        }
      }
    }
  }
}

// columns 0..16*blocks of the chunk -> the first operand: per 16-column block and 32-token
// step, a 16 x 32 tile whose row r is column r's 32 tokens: [block][step][16][32] bf16; the
// columns' sums added to sums (16*blocks fp32) unless it is null
inline void pack_transposed(const Rows& rows, int64_t blocks, int64_t steps, at::BFloat16* out,
                            float* sums) {
  __m512i v[16];
  for (int64_t s = 0; s < steps; ++s) {  // 32 rows at a time, in L1 for their column blocks
    for (int64_t j = 0; j < blocks; ++j) {
      __m512 sum = _mm512_setzero_ps();
      for (int p = 0; p < 16; ++p) {
        const int64_t i = 32 * s + 2 * p;
        v[p] = pair_rows(rows.row(i, 16 * j), rows.row(i + 1, 16 * j));
        if (sums != nullptr) sum = add_rows(sum, rows.row(i, 16 * j), rows.row(i + 1, 16 * j));
      }
      if (sums != nullptr) {
        _mm512_store_ps(sums + 16 * j, _mm512_add_ps(_mm512_load_ps(sums + 16 * j), sum));
      }
      transpose16x16(v);  // v[r]: the pairs of column r, tokens in order
      at::BFloat16* tile = out + (j * steps + s) * 512;
      for (int r = 0; r < 16; ++r) _mm512_store_si512(tile + 32 * r, v[r]);
    }
  }
}

// Where C goes: into out (R x S) at [r][s], or with transposed into out (S x R) at [s][r]; the
// column sums of a (R) and of b (S) into a_sums / b_sums where they are not null.
struct Output {
  float* out;
  bool transposed;
  float* a_sums;
  float* b_sums;
};

// A 16 x 16 fp32 tile held in tmp (rows 64 bytes apart) -> out's rows, transposed: out[c][r]
inline void store_transposed(const float* tmp, float* out, int64_t ld) {
  __m512i v[16];
  for (int r = 0; r < 16; ++r) v[r] = _mm512_load_si512(tmp + 16 * r);
  transpose16x16(v);
  for (int c = 0; c < 16; ++c) _mm512_storeu_si512(out + c * ld, v[c]);
}

// Tile use: 0, 1 a^T's rows (two 16-row halves); 2, 3 b's columns (two halves); 4..7 C.
__attribute__((target("amx-tile,amx-bf16"))) void weight_grad_columns(
    const at::Tensor& a, const at::Tensor& b, const Output& o, int64_t col_begin,
    int64_t col_end) {
  const int64_t M = a.size(0), R = a.size(1), S = b.size(1);
  const int64_t rblocks = R / 16;
  const int64_t panel = std::max<int64_t>(32, kPanelBytes / (R * 4) / 32 * 32);
  const int64_t max_steps = kChunkRows / 32;
  Scratch<at::BFloat16> a_buf(rblocks * max_steps * 512), b_buf(panel / 16 * max_steps * 512);
  // C's accumulators: in out where it is C, else a panel of scratch written out at the end
  Scratch<float> acc(o.transposed ? R * panel : 16), b_sums(panel);
  alignas(64) float tmp[4][256];
  TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  for (int64_t p0 = col_begin; p0 < col_end; p0 += panel) {
    const int64_t p1 = std::min(p0 + panel, col_end), sblocks = (p1 - p0) / 16;
    float* c0 = o.transposed ? acc.data : o.out + p0;  // C's element [r][p0 + s]: c0[r * ldc + s]
    const int64_t ldc = o.transposed ? panel : S;
    // a's sums once: by the thread of C's first columns, in its first panel
    float* a_sums = p0 == 0 ? o.a_sums : nullptr;
    if (a_sums != nullptr) std::memset(a_sums, 0, R * sizeof(float));
    float* bs = o.b_sums != nullptr ? b_sums.data : nullptr;
    if (bs != nullptr) std::memset(bs, 0, (p1 - p0) * sizeof(float));
    for (int64_t m0 = 0; m0 < M; m0 += kChunkRows) {
      const int64_t count = std::min(kChunkRows, M - m0), steps = (count + 31) / 32;
      const bool last = m0 + kChunkRows >= M;
      MMDEIT_BARRIER();
      pack_transposed(Rows{a.data_ptr<at::BFloat16>(), a.stride(0), m0, count}, rblocks, steps,
                      a_buf.data, a_sums);
      pack_pairs(Rows{b.data_ptr<at::BFloat16>(), b.stride(0), m0, count}, p0, sblocks, steps,
                 b_buf.data, bs);
      MMDEIT_BARRIER();
      for (int64_t sj = 0; sj < sblocks; sj += 2) {
        const at::BFloat16* b0 = b_buf.data + sj * steps * 512;
        const at::BFloat16* b1 = b0 + steps * 512;
        for (int64_t rj = 0; rj < rblocks; rj += 2) {
          float* cb = c0 + rj * 16 * ldc + sj * 16;
          if (m0 == 0) {
            _tile_zero(4);
            _tile_zero(5);
            _tile_zero(6);
            _tile_zero(7);
          } else {
            _tile_loadd(4, cb, ldc * 4);
            _tile_loadd(5, cb + 16, ldc * 4);
            _tile_loadd(6, cb + 16 * ldc, ldc * 4);
            _tile_loadd(7, cb + 16 * ldc + 16, ldc * 4);
          }
          const at::BFloat16* a0 = a_buf.data + rj * steps * 512;
          const at::BFloat16* a1 = a0 + steps * 512;
          for (int64_t s = 0; s < steps; ++s) {
            _tile_loadd(0, a0 + s * 512, 64);
            _tile_loadd(2, b0 + s * 512, 64);
            _tile_dpbf16ps(4, 0, 2);
            _tile_loadd(3, b1 + s * 512, 64);
            _tile_dpbf16ps(5, 0, 3);
            _tile_loadd(1, a1 + s * 512, 64);
            _tile_dpbf16ps(6, 1, 2);
            _tile_dpbf16ps(7, 1, 3);
          }
          if (last && o.transposed) {  // C^T's 32 x 32 block at out[p0 + sj*16][rj*16]
            _tile_stored(4, tmp[0], 64);
            _tile_stored(5, tmp[1], 64);
            _tile_stored(6, tmp[2], 64);
            _tile_stored(7, tmp[3], 64);
            MMDEIT_BARRIER();
            float* ob = o.out + (p0 + sj * 16) * R + rj * 16;
            store_transposed(tmp[0], ob, R);
            store_transposed(tmp[1], ob + 16 * R, R);
            store_transposed(tmp[2], ob + 16, R);
            store_transposed(tmp[3], ob + 16 * R + 16, R);
            MMDEIT_BARRIER();
          } else {
            _tile_stored(4, cb, ldc * 4);
            _tile_stored(5, cb + 16, ldc * 4);
            _tile_stored(6, cb + 16 * ldc, ldc * 4);
            _tile_stored(7, cb + 16 * ldc + 16, ldc * 4);
          }
        }
      }
      MMDEIT_BARRIER();
    }
    if (bs != nullptr) std::memcpy(o.b_sums + p0, bs, (p1 - p0) * sizeof(float));
  }
  asm volatile("tilerelease" ::: "memory");
}

#endif  // MMDEIT_AMX

}  // namespace

std::vector<at::Tensor> amx_weight_grad_bf16(at::Tensor x, at::Tensor dy, bool bias) {
  TORCH_CHECK(amx_attention_ready(), "amx_weight_grad_bf16: the tile unit is not available");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && dy.scalar_type() == at::kBFloat16,
              "amx_weight_grad_bf16: bf16 x and dy");
  TORCH_CHECK(x.dim() == 2 && dy.dim() == 2 && x.size(0) == dy.size(0) && x.size(0) > 0,
              "amx_weight_grad_bf16: x (M, C_in) and dy (M, C_out) with the same M > 0 rows");
  TORCH_CHECK(x.stride(1) == 1 && dy.stride(1) == 1, "amx_weight_grad_bf16: rows contiguous");
  const int64_t c_in = x.size(1), c_out = dy.size(1);
  TORCH_CHECK(c_in % 32 == 0 && c_out % 32 == 0 && c_in > 0 && c_out > 0,
              "amx_weight_grad_bf16: C_in and C_out multiples of 32, got ", c_in, " and ", c_out);
  at::Tensor dw = at::empty({c_out, c_in}, x.options().dtype(at::kFloat));
  at::Tensor db = at::empty({bias ? c_out : 0}, x.options().dtype(at::kFloat));
#ifdef MMDEIT_AMX
  const bool transposed = c_in <= c_out;  // a = x (C = x^T dy = dW^T), else a = dy (C = dW)
  const at::Tensor& a = transposed ? x : dy;
  const at::Tensor& b = transposed ? dy : x;
  float* sums = bias ? db.data_ptr<float>() : nullptr;
  const Output o{dw.data_ptr<float>(), transposed, transposed ? nullptr : sums,
                 transposed ? sums : nullptr};
  at::parallel_for(0, b.size(1) / 32, 1, [&](int64_t begin, int64_t end) {
    weight_grad_columns(a, b, o, begin * 32, end * 32);
  });
#endif
  return {dw, db};
}
