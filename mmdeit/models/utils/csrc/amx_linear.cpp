// y = x W^T + b for bf16 inference on the tile unit of AMX CPUs (amx_linear.py), with what follows
// the GEMM done on its output block while the tile unit computes the next block:
//   * nothing: y rounded to bf16 (the qkv projection);
//   * the erf GELU of y, rounded once to bf16 (the FFN's first layer);
//   * shortcut + bf16(y), in the shortcut's dtype (fp32 under autocast; the output projection and
//     the FFN's second layer), into the shortcut's memory if asked.
// The weight is packed once (amx_pack_weight: pairs of k interleaved, 16 x 32 tiles in order).
// Each thread computes output blocks of 32 rows x 32 columns (2 x 2 tiles of fp32 accumulators,
// k 32 at a time); while the tile unit computes block j, the vector units finish block j-1 (bias,
// GELU or shortcut, bf16), a few rows per step of k. x's rows and the weight's columns are taken
// in chunks and panels that stay in L2 together. oneDNN (its fused GELU, a separate add) took
// 1.00x-1.51x this one's time at DeiT-S's shapes, 0.93x-1.43x at DeiT-B's (measured). Products as
// oneDNN's AMX kernel computes them: fp32 accumulation of bf16 products, k in steps of 32.
#include <ATen/Parallel.h>

#include <algorithm>

#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

enum class Epilogue { kNone, kGelu, kShortcut };

// gelu(y) = y/2 (1 + erf(y / sqrt 2)); erf by Eigen's rational approximation on [-4, 4] (absolute
// error below 2e-7; erf is +-1 in fp32 beyond), 1/q by rcp14 and a Newton step
inline __m512 gelu(__m512 y) {
  __m512 z = _mm512_mul_ps(y, _mm512_set1_ps(0.70710678118654752f));
  z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-4.f)), _mm512_set1_ps(4.f));
  const __m512 z2 = _mm512_mul_ps(z, z);
  __m512 p = _mm512_fmadd_ps(z2, _mm512_set1_ps(-2.72614225801306e-10f),
                             _mm512_set1_ps(2.77068142495902e-08f));
  p = _mm512_fmadd_ps(z2, p, _mm512_set1_ps(-2.10102402082508e-06f));
  p = _mm512_fmadd_ps(z2, p, _mm512_set1_ps(-5.69250639462346e-05f));
  p = _mm512_fmadd_ps(z2, p, _mm512_set1_ps(-7.34990630326855e-04f));
  p = _mm512_fmadd_ps(z2, p, _mm512_set1_ps(-2.95459980854025e-03f));
  p = _mm512_fmadd_ps(z2, p, _mm512_set1_ps(-1.60960333262415e-02f));
  __m512 q = _mm512_fmadd_ps(z2, _mm512_set1_ps(-1.45660718464996e-05f),
                             _mm512_set1_ps(-2.13374055278905e-04f));
  q = _mm512_fmadd_ps(z2, q, _mm512_set1_ps(-1.68282697438203e-03f));
  q = _mm512_fmadd_ps(z2, q, _mm512_set1_ps(-7.37332916720468e-03f));
  q = _mm512_fmadd_ps(z2, q, _mm512_set1_ps(-1.42647390514189e-02f));
  __m512 r = _mm512_rcp14_ps(q);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.f)));
  const __m512 erf = _mm512_mul_ps(_mm512_mul_ps(z, p), r);
  const __m512 half = _mm512_mul_ps(y, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half, erf, half);
}

inline __m512 round_bf16(__m512 v) { return bf16_to_fp32(to_bf16(v)); }

struct Problem {
  const at::BFloat16* x;  // (M, K), rows K apart
  const uint32_t* w;      // packed: [N/16][K/32][16 pairs of k][16 columns] dwords
  const float* bias;      // (N) fp32, or nullptr
  void* shortcut;         // (M, N) fp32 or bf16, or nullptr
  bool shortcut_bf16;
  void* out;              // (M, N): bf16, or the shortcut's dtype
  int64_t M, K, N;
};

// One row of 32 columns of a finished block: c (fp32 accumulators) -> out row
template <Epilogue kEpi>
inline void finish_row(const Problem& p, const float* c, int64_t row, int64_t col) {
  __m512 y[2];
  for (int h = 0; h < 2; ++h) {
    y[h] = _mm512_load_ps(c + 16 * h);
    if (p.bias) y[h] = _mm512_add_ps(y[h], _mm512_loadu_ps(p.bias + col + 16 * h));
  }
  const int64_t at = row * p.N + col;
  if (kEpi == Epilogue::kShortcut) {  // shortcut + the branch rounded to bf16
    if (p.shortcut_bf16) {
      const auto* s = static_cast<const at::BFloat16*>(p.shortcut) + at;
      auto* o = static_cast<at::BFloat16*>(p.out) + at;
      for (int h = 0; h < 2; ++h) {
        store_bf16(o + 16 * h, _mm512_add_ps(load_bf16(s + 16 * h, 0xFFFF), round_bf16(y[h])),
                   0xFFFF);
      }
    } else {
      const float* s = static_cast<const float*>(p.shortcut) + at;
      float* o = static_cast<float*>(p.out) + at;
      for (int h = 0; h < 2; ++h) {
        _mm512_storeu_ps(o + 16 * h, _mm512_add_ps(_mm512_loadu_ps(s + 16 * h), round_bf16(y[h])));
      }
    }
    return;
  }
  auto* o = static_cast<at::BFloat16*>(p.out) + at;
  for (int h = 0; h < 2; ++h) {
    store_bf16(o + 16 * h, kEpi == Epilogue::kGelu ? gelu(y[h]) : y[h], 0xFFFF);
  }
}

struct Block {  // a block whose accumulators are stored in c: rows row0 + [begin, end), 32 columns
  int64_t row0, begin, end, col;
  const float* c;
};

#ifdef MMDEIT_AMX

// Blocking for the caches: a thread takes kChunkBytes of x's rows at a time and, for those, the
// weight kPanelBytes at a time, so that both stay in its L2 while they are reused.
constexpr int64_t kChunkBytes = 1 << 20;
constexpr int64_t kPanelBytes = 1 << 19;

// Tile use: 0..3 the accumulators (rows 0-15 / 16-31 x columns 0-15 / 16-31), 4, 5 x, 6, 7 W.
// Tasks t in [begin, end): column group t / blocks, row block t % blocks.
template <Epilogue kEpi>
__attribute__((target("amx-tile,amx-bf16"))) void gemm_tasks(const Problem& p, int64_t groups,
                                                              int64_t begin, int64_t end) {
  const int64_t ks = p.K / 32, ncb = p.N / 32, per_group = (ncb + groups - 1) / groups;
  const int64_t blocks = (p.M + 31) / 32, lda = p.K * 2, block_bytes = 32 * p.K * 2;
  const int64_t chunk = std::max<int64_t>(1, kChunkBytes / block_bytes);  // row blocks
  const int64_t panel = std::max<int64_t>(1, kPanelBytes / block_bytes);  // column blocks
  const int rows_per_step = static_cast<int>((32 + ks - 1) / ks);
  Scratch<float> acc(2 * 32 * 32);                // two blocks: the one computed, the one finished
  Scratch<at::BFloat16> pad(p.M < 32 ? 32 * p.K : 1);  // fewer than 32 rows: zero-padded x
  if (p.M < 32) std::memcpy(pad.data, p.x, p.M * p.K * sizeof(at::BFloat16));
  TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  Block prev{0, 0, 0, 0, nullptr};
  auto finish = [&](const Block& b, int r0, int r1) {
    for (int64_t r = std::max<int64_t>(r0, b.begin); r < std::min<int64_t>(r1, b.end); ++r) {
      finish_row<kEpi>(p, b.c + r * 32, b.row0 + r, b.col);
    }
  };
  int buf = 0;
  auto compute = [&](int64_t rb, int64_t cb) {
    // rows 32rb..32rb+31; the last block is the 32 rows before the end (the first of them
    // written by the block before), or the padded copy of fewer than 32 rows
    const int64_t row0 = p.M < 32 ? 0 : std::min(rb * 32, p.M - 32);
    const at::BFloat16* a = p.M < 32 ? pad.data : p.x + row0 * p.K;
    const uint32_t* w0 = p.w + 2 * cb * ks * 256;
    const uint32_t* w1 = w0 + ks * 256;
    MMDEIT_BARRIER();
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t s = 0; s < ks; ++s) {
      _tile_loadd(4, a + 32 * s, lda);
      _tile_loadd(6, w0 + s * 256, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_loadd(7, w1 + s * 256, 64);
      _tile_dpbf16ps(1, 4, 7);
      _tile_loadd(5, a + 16 * p.K + 32 * s, lda);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
      // the vector units finish the block before, a few rows a step, meanwhile
      if (prev.c) finish(prev, s * rows_per_step, (s + 1) * rows_per_step);
    }
    float* c = acc.data + buf * 1024;
    _tile_stored(0, c, 128);
    _tile_stored(1, c + 16, 128);
    _tile_stored(2, c + 512, 128);
    _tile_stored(3, c + 512 + 16, 128);
    MMDEIT_BARRIER();
    prev = Block{row0, rb * 32 - row0, std::min<int64_t>(32, p.M), cb * 32, c};
    buf ^= 1;
  };
  for (int64_t t = begin; t < end;) {
    const int64_t g = t / blocks, rb_begin = t % blocks;
    const int64_t rb_end = std::min(blocks, rb_begin + (end - t));
    const int64_t cb_begin = g * per_group, cb_end = std::min(ncb, cb_begin + per_group);
    for (int64_t r0 = rb_begin; r0 < rb_end; r0 += chunk) {
      for (int64_t c0 = cb_begin; c0 < cb_end; c0 += panel) {
        for (int64_t rb = r0; rb < std::min(rb_end, r0 + chunk); ++rb) {
          for (int64_t cb = c0; cb < std::min(cb_end, c0 + panel); ++cb) compute(rb, cb);
        }
      }
    }
    t += rb_end - rb_begin;
  }
  if (prev.c) finish(prev, 0, 32);
  asm volatile("tilerelease" ::: "memory");
}

#endif  // MMDEIT_AMX

}  // namespace

at::Tensor amx_pack_weight(at::Tensor w) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && w.is_contiguous(),
              "amx_pack_weight: a contiguous (C_out, C_in) bf16 weight");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(N > 0 && K > 0 && N % 32 == 0 && K % 32 == 0,
              "amx_pack_weight: C_out and C_in multiples of 32, got ", N, " and ", K);
  const int64_t ks = K / 32;
  at::Tensor out = at::empty({N / 16, ks, 16, 32}, w.options());
  const at::BFloat16* src = w.data_ptr<at::BFloat16>();
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, N / 16, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; ++nb) {
      for (int64_t s = 0; s < ks; ++s) {  // 16 rows of W x 16 pairs of k -> 16 pairs x 16 columns
        __m512i r[16];
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + (nb * 16 + i) * K + 32 * s);
        transpose16x16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + ((nb * ks + s) * 16 + i) * 16, r[i]);
      }
    }
  });
  return out;
}

at::Tensor amx_linear_bf16(at::Tensor x, at::Tensor packed, c10::optional<at::Tensor> bias,
                           bool gelu, c10::optional<at::Tensor> shortcut, bool inplace) {
  TORCH_CHECK(amx_attention_ready(), "amx_linear_bf16: the tile unit is not available");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous() && x.dim() >= 1,
              "amx_linear_bf16: a contiguous bf16 input");
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.dim() == 4 &&
                  packed.size(2) == 16 && packed.size(3) == 32 && packed.is_contiguous(),
              "amx_linear_bf16: a weight packed by amx_pack_weight");
  const int64_t N = packed.size(0) * 16, K = packed.size(1) * 32;
  TORCH_CHECK(x.size(-1) == K, "amx_linear_bf16: the input has ", x.size(-1),
              " channels, the weight ", K);
  const int64_t M = x.numel() / K;
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  at::Tensor b32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "amx_linear_bf16: a bias of ", N);
    b32 = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out;
  Problem p{x.data_ptr<at::BFloat16>(), reinterpret_cast<const uint32_t*>(packed.data_ptr()),
            bias.has_value() ? b32.data_ptr<float>() : nullptr, nullptr, false, nullptr, M, K, N};
  if (shortcut.has_value()) {
    const at::Tensor& s = *shortcut;
    TORCH_CHECK(!gelu, "amx_linear_bf16: GELU or a shortcut, not both");
    TORCH_CHECK((s.scalar_type() == at::kFloat || s.scalar_type() == at::kBFloat16) &&
                    s.is_contiguous() && s.sizes() == at::IntArrayRef(shape),
                "amx_linear_bf16: a contiguous fp32 or bf16 shortcut of the output's shape");
    TORCH_CHECK(!(inplace && s.data_ptr() == x.data_ptr()),
                "amx_linear_bf16: the shortcut written in place cannot be the input");
    out = inplace ? s : at::empty(shape, s.options());
    p.shortcut = s.data_ptr();
    p.shortcut_bf16 = s.scalar_type() == at::kBFloat16;
  } else {
    out = at::empty(shape, x.options());
  }
  p.out = out.data_ptr();
  if (M == 0) return out;
#ifdef MMDEIT_AMX
  // tasks: row blocks of 32 in column groups (more than one where there are few row blocks)
  const int64_t blocks = (M + 31) / 32, ncb = N / 32;
  const int64_t groups = std::min<int64_t>(ncb, (4 * at::get_num_threads() + blocks - 1) / blocks);
  at::parallel_for(0, blocks * groups, 1, [&](int64_t begin, int64_t end) {
    if (shortcut.has_value()) {
      gemm_tasks<Epilogue::kShortcut>(p, groups, begin, end);
    } else if (gelu) {
      gemm_tasks<Epilogue::kGelu>(p, groups, begin, end);
    } else {
      gemm_tasks<Epilogue::kNone>(p, groups, begin, end);
    }
  });
#endif
  return out;
}
