// softmax(q k^T * scale) v for bf16 inference on the tile unit of AMX CPUs (amx_attention.py).
//
// One (sample, head) pair at a time per thread, 16 query rows at a time, everything in L1/L2:
//   1. k^T and v packed once per pair into the tile unit's pair-interleaved (VNNI) layout;
//   2. S = q k^T for 16 rows: fp32 tiles of 16 x 16, stored to a row buffer;
//   3. softmax of the 16 rows as the GEMM attention computes it: each score rounded to bf16
//      (the dtype its bmm writes), times scale (a power of two: exact), fp32 softmax (exp_u20),
//      P in bf16;
//   4. O = P v for the 16 rows in fp32 tiles, rounded to bf16 and written into the heads-merged
//      output (B, n, h*d): no (B*h, n, N) scores in memory, no copies of q, k, v or of the output.
// The same products, roundings and softmax as two bmm calls around cpu_kernels' softmax (tested
// bit for bit); q, k and v may be strided views of the qkv GEMM's output (last dim contiguous).
#include <ATen/Parallel.h>

#include "amx_tiles.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

using namespace mmdeit_kernels;

namespace {

constexpr int64_t kHead = 64;  // the head size the kernel takes (every DeiT/ViT arch shipped)
// Up to this many keys the next 16 rows' scores are computed during this block's softmax (two
// blocks of scores in L1/L2: 1.09x-1.20x the kernel's speed at 197-320 keys, 0.93x-0.95x at 577;
// measured).
constexpr int64_t kOverlapKeys = 320;

#ifdef MMDEIT_AMX

using Rows = QueryRows<at::BFloat16>;  // 16 query rows

// Tile use: amx_tiles.h's products (rows_times_keys, rows_times_values).
__attribute__((target("amx-tile,amx-bf16"))) void attend_pairs(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, float scale,
    at::BFloat16* probs, int64_t begin, int64_t end) {
  const int64_t H = q.size(1), n = q.size(2), N = k.size(2), C = H * kHead;
  const int64_t nb = (N + 15) / 16, Np = nb * 16;  // score columns: key blocks of 16
  const int64_t ks = (N + 31) / 32, Kp = ks * 32;  // P v's inner dim: steps of 32 keys
  const int nv = static_cast<int>((N + kLanes - 1) / kLanes);
  const int64_t ld_p = Kp * 2;  // P's rows, bytes apart
  Scratch<uint32_t> kt_buf(kHead / 2 * Np), vv_buf(Kp / 2 * kHead);
  Scratch<float> s_buf(2 * 16 * Np), o_buf(16 * kHead);  // two blocks of scores
  Scratch<at::BFloat16> p_buf(16 * Kp), q_pad(16 * kHead);
  uint32_t* kt = kt_buf.data;
  uint32_t* vv = vv_buf.data;
  float* sb[2] = {s_buf.data, s_buf.data + 16 * Np};
  float* ob = o_buf.data;
  at::BFloat16* pb = p_buf.data;
  const at::BFloat16* qp = q.data_ptr<at::BFloat16>();
  const at::BFloat16* kp = k.data_ptr<at::BFloat16>();
  const at::BFloat16* vp = v.data_ptr<at::BFloat16>();
  at::BFloat16* op = out.data_ptr<at::BFloat16>();
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 regs[kInterleave][kMaxVecs];
  TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  const int64_t blocks = (n + 15) / 16, groups = (nb + 3) / 4;  // S: groups of 4 key blocks
  const bool overlap = N <= kOverlapKeys;
  // Query rows 16i..16i+15 (query_rows: the last block ends at n)
  auto rows_of = [&](const at::BFloat16* qb, int64_t i) {
    return query_rows<16>(qb, q.stride(2), n, i, q_pad.data, kHead);
  };
  // S = q k^T of 16 rows for key blocks 4g..4g+3, stored to s
  auto scores = [&](const Rows& rows, int64_t g, float* s) {
    rows_times_keys(rows.q, rows.ld * 2, kt, Np, 4 * g, std::min<int64_t>(4, nb - 4 * g), s);
  };
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / H, h = bh % H;
    const at::BFloat16* qb = qp + b * q.stride(0) + h * q.stride(1);
    MMDEIT_BARRIER();
    // k^T: [32 pairs of d][Np keys] dwords, keys >= N zero
    transpose_rows(kp + b * k.stride(0) + h * k.stride(1), k.stride(2) * 2, N, kHead / 2, Np, kt);
    pack_values(vp + b * v.stride(0) + h * v.stride(1), v.stride(2), N, vv);
    Rows cur = rows_of(qb, 0);  // each block's rows found once: `next` becomes `cur`
    if (overlap) {
      for (int64_t g = 0; g < groups; ++g) scores(cur, g, sb[0]);
    }
    for (int64_t i = 0; i < blocks; ++i) {
      // the softmax of these 16 rows in 4 groups of 4, with `overlap` the next rows' scores
      // issued between them: the tile unit computes those while the vector units compute this
      const Rows next = i + 1 < blocks ? rows_of(qb, i + 1) : cur;
      const float* s_cur = sb[i & 1];
      if (!overlap) {
        for (int64_t g = 0; g < groups; ++g) scores(cur, g, sb[i & 1]);
      }
      int64_t g = 0;
      for (int r = 0; r < 16; r += kInterleave) {
        for (; overlap && i + 1 < blocks && g < groups * (r + kInterleave) / 16; ++g) {
          scores(next, g, sb[(i + 1) & 1]);
        }
        softmax_rows<kInterleave>(ScoreRows{s_cur + r * Np, Np, vscale}, pb + r * Kp, Kp, N, nv,
                                  regs);
      }
      if (probs != nullptr) {  // P of these rows, for the backward (B, h, n, N)
        for (int64_t r = cur.begin; r < cur.end; ++r) {
          std::memcpy(probs + (bh * n + cur.first + r) * N, pb + r * Kp, N * sizeof(at::BFloat16));
        }
      }
      rows_times_values(pb, ld_p, vv, ks, ob);  // O = P v
      // bf16 into (B, n, h*d)
      store_rows_bf16(ob, cur.begin, cur.end, op + (b * n + cur.first) * C + h * kHead, C);
      cur = next;
    }
  }
  asm volatile("tilerelease" ::: "memory");
}

#endif  // MMDEIT_AMX

}  // namespace

bool amx_attention_ready() {
#if defined(MMDEIT_AMX) && defined(__linux__)
  // Linux hands the tile registers' state to a process that asks (ARCH_REQ_XCOMP_PERM for
  // XTILEDATA); PyTorch's oneDNN asks too. Asked once.
  static const bool ready = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ready;
#else
  return false;
#endif
}

at::Tensor attention_bf16(at::Tensor q, at::Tensor k, at::Tensor v, double scale,
                          c10::optional<at::Tensor> probs) {
  TORCH_CHECK(amx_attention_ready(), "attention_bf16: the tile unit is not available");
  check_attention_inputs(q, k, v, at::kBFloat16, kHead, "attention_bf16");
  const int64_t B = q.size(0), H = q.size(1), n = q.size(2), N = k.size(2);
  at::BFloat16* pp = nullptr;
  if (probs.has_value()) {
    TORCH_CHECK(probs->scalar_type() == at::kBFloat16 && probs->is_contiguous() &&
                    probs->sizes() == at::IntArrayRef({B, H, n, N}),
                "attention_bf16: probs a contiguous bf16 (B, h, n, N) tensor");
    pp = probs->data_ptr<at::BFloat16>();
  }
  at::Tensor out = at::empty({B, n, H * kHead}, q.options());
#ifdef MMDEIT_AMX
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    attend_pairs(q, k, v, out, s, pp, begin, end);
  });
#endif
  return out;
}
