// The backward of the bf16 attention on the tile unit of AMX CPUs (amx_attention_grad.py):
//
//   dP = dO v^T * scale,  dS = P * (dP - rowsum(dP * P)),  dq = dS k,  dk = dS^T q,  dv = P^T dO
//
// from P (B, h, n, N) bf16 written by the forward kernel, q, k, v as the forward read them
// (views of the qkv GEMM's output) and dO with the heads merged (B, n, h*d). The GEMM attention's
// backward is five bmm calls (~490 GFLOP/s on 2 cores at 198 x 64 x 198), ATen's bf16 softmax
// backward (as slow as those) and copies of dO, q, k and v into the heads' layout; here one
// (sample, head) pair at a time per thread, all in L1/L2:
//   1. v^T, k, q and dO packed once per pair into the tile unit's pair-interleaved layout;
//   2. for 16 query rows at a time: dP in fp32 tiles, rounded to bf16 times scale (the bmm's
//      output); dS in fp32 from it and P, rounded to bf16 (ATen's bf16 softmax backward: the
//      row sum in fp32); dq = dS k from the tiles; dS and P also written transposed (16 x 16
//      dword transposes) for
//   3. dk = dS^T q and dv = P^T dO, 16 keys at a time.
// The products and roundings of the GEMM backward; only the fp32 sums' order differs (tested
// within bf16 rounding). dq, dk and dv are written in bf16 wherever their strides say (the
// qkv output's gradient, whole): no copies of the inputs or of the gradients.
#include <ATen/Parallel.h>

#include "amx_tiles.h"

using namespace mmdeit_kernels;

namespace {

constexpr int64_t kHead = 64;  // the head size (amx_attention.cpp's)

#ifdef MMDEIT_AMX

// 16 rows' bf16 (the low half of each dword of v[r]) -> out[c * ld + r]: columns of the
// transposed matrix, 16 bf16 each
inline void store_transposed_bf16(__m512i* v, at::BFloat16* out, int64_t ld) {
  transpose16x16(v);
  for (int c = 0; c < 16; ++c) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c * ld), _mm512_cvtepi32_epi16(v[c]));
  }
}

struct Pointers {  // a tensor's data and strides, (B, h, rows, 64) with the last dim contiguous
  at::BFloat16* data;
  int64_t sb, sh, sr;
  explicit Pointers(const at::Tensor& t)
      : data(t.data_ptr<at::BFloat16>()), sb(t.stride(0)), sh(t.stride(1)), sr(t.stride(2)) {}
  at::BFloat16* at(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

__attribute__((target("amx-tile,amx-bf16"))) void attention_grad_pairs(
    const at::Tensor& grad, const Pointers& q, const Pointers& k, const Pointers& v,
    const at::BFloat16* probs, int64_t H, int64_t n, int64_t N, float scale, const Pointers& dq,
    const Pointers& dk, const Pointers& dv, int64_t begin, int64_t end) {
  const int64_t nb = (N + 15) / 16, Np = nb * 16;  // dP's columns: key blocks of 16
  const int64_t ks = (N + 31) / 32, Kp = ks * 32;  // dS k's inner dim: steps of 32 keys
  const int64_t qs = (n + 31) / 32, Qp = qs * 32;  // dS^T q's and P^T dO's: 32 queries
  const int64_t blocks = (n + 15) / 16, groups = (nb + 3) / 4;
  const int nv = static_cast<int>(nb);
  Scratch<uint32_t> vt_buf(kHead / 2 * Np), kk_buf(Kp / 2 * kHead), qq_buf(Qp / 2 * kHead),
      oo_buf(Qp / 2 * kHead);
  Scratch<float> dp_buf(16 * Np), o_buf(16 * kHead);
  // dS's 16 rows (zero past N); dS^T and P^T (Np x Qp, zero past n); dO's rows where n < 16
  Scratch<at::BFloat16> ds_buf(16 * Kp), dst_buf(Np * Qp), pt_buf(Np * Qp), do_pad(16 * kHead);
  uint32_t *vt = vt_buf.data, *kk = kk_buf.data, *qq = qq_buf.data, *oo = oo_buf.data;
  float *dp = dp_buf.data, *ob = o_buf.data;
  at::BFloat16 *ds = ds_buf.data, *dst = dst_buf.data, *pt = pt_buf.data;
  const at::BFloat16* gp = grad.data_ptr<at::BFloat16>();
  const int64_t ld_g = grad.stride(1);
  const __m512 vscale = _mm512_set1_ps(scale);
  TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const at::BFloat16* dob = gp + b * grad.stride(0) + h * kHead;  // dO's rows, ld_g apart
    const at::BFloat16* pb = probs + bh * n * N;
    MMDEIT_BARRIER();
    transpose_rows(v.at(b, h), v.sr * 2, N, kHead / 2, Np, vt);  // v^T: [32 pairs][Np keys]
    pack_values(k.at(b, h), k.sr, N, kk);                        // [key pairs][64]
    pack_values(q.at(b, h), q.sr, n, qq);                        // [query pairs][64]
    pack_values(dob, ld_g, n, oo);
    for (int64_t i = 0; i < blocks; ++i) {
      const QueryRows<at::BFloat16> rows = query_rows<16>(dob, ld_g, n, i, do_pad.data, kHead);
      for (int64_t g = 0; g < groups; ++g) {  // dO v^T, fp32
        const int64_t count = std::min<int64_t>(4, nb - 4 * g);
        rows_times_keys(rows.q, rows.ld * 2, vt, Np, 4 * g, count, dp);
      }
      const int valid = static_cast<int>(std::min<int64_t>(16, n));  // rows past n: zero
      float sums[16];  // rowsum(dP * P) in fp32
      for (int r = 0; r < valid; ++r) {
        const at::BFloat16* p_row = pb + (rows.first + r) * N;
        __m512 sum = _mm512_setzero_ps();
        for (int j = 0; j < nv; ++j) {
          const __mmask16 m = lanes(N, j, nv);
          // dP rounded to bf16 times scale (exact: a power of two), as the bmm writes it; kept
          // in place for dS below
          float* dp_j = dp + r * Np + j * kLanes;
          const __m512 d = _mm512_mul_ps(bf16_to_fp32(to_bf16(_mm512_maskz_loadu_ps(m, dp_j))),
                                         vscale);
          _mm512_storeu_ps(dp_j, d);
          sum = _mm512_fmadd_ps(d, load_bf16(p_row + j * kLanes, m), sum);
        }
        sums[r] = _mm512_reduce_add_ps(sum);
      }
      for (int j = 0; j < nv; ++j) {  // dS = P * (dP - sum), 16 keys of the 16 rows at a time
        const __mmask16 m = lanes(N, j, nv);
        __m512i ds_cols[16], p_cols[16];
        for (int r = 0; r < 16; ++r) {
          if (r >= valid) {
            ds_cols[r] = p_cols[r] = _mm512_setzero_si512();
            continue;
          }
          const __m256i p_bits =
              _mm256_maskz_loadu_epi16(m, pb + (rows.first + r) * N + j * kLanes);
          const __m512 diff = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + r * Np + j * kLanes),
                                            _mm512_set1_ps(sums[r]));
          const __m512 dsr = _mm512_mul_ps(bf16_to_fp32(p_bits), diff);
          const __m256i ds_bits = _mm256_maskz_mov_epi16(m, to_bf16(dsr));  // zero past N
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(ds + r * Kp + j * kLanes), ds_bits);
          ds_cols[r] = _mm512_cvtepu16_epi32(ds_bits);
          p_cols[r] = _mm512_cvtepu16_epi32(p_bits);
        }
        store_transposed_bf16(ds_cols, dst + j * kLanes * Qp + rows.first, Qp);
        store_transposed_bf16(p_cols, pt + j * kLanes * Qp + rows.first, Qp);
      }
      rows_times_values(ds, Kp * 2, kk, ks, ob);  // dq = dS k
      store_rows_bf16(ob, rows.begin, rows.end, dq.at(b, h) + rows.first * dq.sr, dq.sr);
    }
    for (int64_t j = 0; j < nb; ++j) {  // dk = dS^T q, dv = P^T dO: 16 keys at a time
      const int64_t first = N < 16 ? 0 : std::min(16 * j, N - 16);  // the last ends at N
      const int64_t from = 16 * j - first, to = std::min<int64_t>(16, N - first);
      rows_times_values(dst + first * Qp, Qp * 2, qq, qs, ob);
      store_rows_bf16(ob, from, to, dk.at(b, h) + first * dk.sr, dk.sr);
      rows_times_values(pt + first * Qp, Qp * 2, oo, qs, ob);
      store_rows_bf16(ob, from, to, dv.at(b, h) + first * dv.sr, dv.sr);
    }
  }
  asm volatile("tilerelease" ::: "memory");
}

#endif  // MMDEIT_AMX

void check_heads(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 && t.sizes() == shape && t.stride(3) == 1,
              "attention_backward_bf16: ", name, " a bf16 ", shape,
              " tensor with its last dim contiguous");
}

}  // namespace

void attention_backward_bf16(at::Tensor grad, at::Tensor q, at::Tensor k, at::Tensor v,
                             at::Tensor probs, double scale, at::Tensor dq, at::Tensor dk,
                             at::Tensor dv) {
  TORCH_CHECK(amx_attention_ready(), "attention_backward_bf16: the tile unit is not available");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4,
              "attention_backward_bf16: q (B, h, n, d), k (B, h, N, d)");
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), N = k.size(2);
  TORCH_CHECK(n > 0 && N > 0 && N <= kMaxRow, "attention_backward_bf16: 1 to ", kMaxRow, " keys");
  check_heads(q, "q", {B, H, n, kHead});
  check_heads(k, "k", {B, H, N, kHead});
  check_heads(v, "v", {B, H, N, kHead});
  check_heads(dq, "dq", {B, H, n, kHead});
  check_heads(dk, "dk", {B, H, N, kHead});
  check_heads(dv, "dv", {B, H, N, kHead});
  TORCH_CHECK(grad.scalar_type() == at::kBFloat16 &&
                  grad.sizes() == at::IntArrayRef({B, n, H * kHead}) && grad.stride(2) == 1,
              "attention_backward_bf16: grad a bf16 (B, n, h*d) tensor, its last dim contiguous");
  TORCH_CHECK(probs.scalar_type() == at::kBFloat16 && probs.is_contiguous() &&
                  probs.sizes() == at::IntArrayRef({B, H, n, N}),
              "attention_backward_bf16: probs a contiguous bf16 (B, h, n, N) tensor");
#ifdef MMDEIT_AMX
  const Pointers qp(q), kp(k), vp(v), dqp(dq), dkp(dk), dvp(dv);
  const at::BFloat16* pp = probs.data_ptr<at::BFloat16>();
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    attention_grad_pairs(grad, qp, kp, vp, pp, H, n, N, s, dqp, dkp, dvp, begin, end);
  });
#endif
}
