// Flash-style attention on the CPU: query blocks x key blocks, online softmax, no S x S
// matrix. Block products go through the BLAS GEMM inside libtorch (MKL on x86 wheels);
// exp is vectorized. Key blocks that no query of the block can see
// (causal, all-padding, disjoint segments) are skipped, so causal costs about half.

// Vectorized<float> with AVX-512/AVX2 bodies. The namespace name is private to this file:
// other translation units may include vec.h with other capabilities, and sharing the
// default namespace would give one inline symbol two different bodies (an ODR clash).
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY ptft_attention_avx512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY ptft_attention_avx2
#else
#define CPU_CAPABILITY ptft_attention_default
#endif
#include <ATen/cpu/vec/vec.h>

#include "attention/attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace ptft {
namespace {

// Forward: one wide key block per GEMM keeps the online-softmax rescaling rare; causal
// skipping comes from stopping each query block at its diagonal, not from the block size.
// Packed segments need narrower key blocks for whole blocks to fall outside a document.
constexpr int64_t kFwdBlockQ = 64;
constexpr int64_t kFwdBlockK = 512;
constexpr int64_t kFwdBlockKSegments = 128;
// Backward: smaller key blocks keep the dK/dV accumulators and P/dP tiles in cache.
constexpr int64_t kBwdBlockQ = 64;
constexpr int64_t kBwdBlockK = 128;

template <typename T>
using acc_type_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// s[j] = exp(s[j] - shift); returns the sum. exp_u20 (about 2e-6 relative error) is what
// torch's CPU flash attention uses too; it maps -inf to 0.
inline float exp_shift_sum(float* s, int64_t n, float shift) {
  using Vec = at::vec::Vectorized<float>;
  const Vec vshift(shift);
  Vec vsum(0.f);
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) {
    Vec e = (Vec::loadu(s + j) - vshift).exp_u20();
    e.store(s + j);
    vsum = vsum + e;
  }
  float lanes[Vec::size()];
  vsum.store(lanes);
  float sum = 0.f;
  for (int64_t t = 0; t < Vec::size(); ++t) sum += lanes[t];
  for (; j < n; ++j) {
    s[j] = std::exp(s[j] - shift);
    sum += s[j];
  }
  return sum;
}

inline double exp_shift_sum(double* s, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - shift);
    sum += s[j];
  }
  return sum;
}

inline float row_max(const float* s, int64_t n) {
  using Vec = at::vec::Vectorized<float>;
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
  float lanes[Vec::size()];
  vmax.store(lanes);
  float m = lanes[0];
  for (int64_t t = 1; t < Vec::size(); ++t) m = std::max(m, lanes[t]);
  for (; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

inline double row_max(const double* s, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = std::max(m, s[j]);
  return m;
}

// Pointer to n accumulation-type values: the source itself when no conversion is needed.
template <typename scalar_t, typename acc_t>
inline const acc_t* as_acc(const scalar_t* src, int64_t n, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return src;
  } else {
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return buf.data();
  }
}

#include "attention/attention_cpu_blas.h"  // gemm_abt, gemm_ab, gemm_atb, SingleThreadBlas

// Which keys a query may see, for one batch row.
struct Visibility {
  bool causal;
  const bool* pad;    // (S_k) True = padding, or null
  const int32_t* seg;  // (S) or null

  enum Kind { kSkip, kFull, kPartial };

  // Segment range of a query block, so each key block needs one scan to classify.
  void seg_range(int64_t start, int64_t n, int32_t* lo, int32_t* hi) const {
    *lo = *hi = seg ? seg[start] : 0;
    for (int64_t i = 1; seg && i < n; ++i) {
      *lo = std::min(*lo, seg[start + i]);
      *hi = std::max(*hi, seg[start + i]);
    }
  }

  Kind classify(int64_t qs, int64_t mq, int64_t ks, int64_t nk, int32_t qlo, int32_t qhi) const {
    if (causal && ks > qs + mq - 1) return kSkip;
    bool partial = causal && ks + nk - 1 > qs;
    if (pad) {
      int64_t n_pad = 0;
      for (int64_t j = 0; j < nk; ++j) n_pad += pad[ks + j];
      if (n_pad == nk) return kSkip;
      partial |= n_pad > 0;
    }
    if (seg) {
      int32_t klo, khi;
      seg_range(ks, nk, &klo, &khi);
      if (khi < qlo || klo > qhi) return kSkip;
      partial |= !(qlo == qhi && klo == khi);
    }
    return partial ? kPartial : kFull;
  }

  // Sets scores of invisible (query, key) pairs to -inf in an (mq x nk) block. Each
  // rule works on whole row spans so the loops vectorize.
  template <typename T>
  void apply(T* s, int64_t ld, int64_t qs, int64_t mq, int64_t ks, int64_t nk) const {
    const T ninf = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < mq; ++i) {
      T* si = s + i * ld;
      if (causal) {  // keys after the query's own position
        for (int64_t j = std::max<int64_t>(0, qs + i - ks + 1); j < nk; ++j) si[j] = ninf;
      }
      if (pad) {
        const bool* pk = pad + ks;
        for (int64_t j = 0; j < nk; ++j) si[j] = pk[j] ? ninf : si[j];
      }
      if (seg) {
        const int32_t* sk = seg + ks;
        const int32_t sq = seg[qs + i];
        for (int64_t j = 0; j < nk; ++j) si[j] = sk[j] == sq ? si[j] : ninf;
      }
    }
  }
};

// H query heads share Hkv key/value heads (grouped-query attention; Hkv == H is plain
// multi-head, Hkv == 1 multi-query): query head h reads kv head h / (H / Hkv).
struct Shape {
  int64_t B, H, Hkv, Sq, Sk, D;
  int64_t group() const { return H / Hkv; }
  // Row of (batch, kv head) in k/v for row bh = b * H + h of q.
  int64_t kv_row(int64_t bh) const { return (bh / H) * Hkv + (bh % H) / group(); }
};

Visibility visibility_for(int64_t b, const Shape& sh, bool causal, const bool* pad,
                          const int32_t* seg) {
  return Visibility{causal, pad ? pad + b * sh.Sk : nullptr, seg ? seg + b * sh.Sq : nullptr};
}

template <typename scalar_t>
void forward_impl(const scalar_t* q, const scalar_t* k, const scalar_t* v, scalar_t* out,
                  acc_type_t<scalar_t>* lse, const Shape& sh, bool causal, const bool* pad,
                  const int32_t* seg, double scale_d) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t D = sh.D, n_qblocks = (sh.Sq + kFwdBlockQ - 1) / kFwdBlockQ;
  const int64_t block_k = seg ? kFwdBlockKSegments : kFwdBlockK;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, sh.B * sh.H * n_qblocks, 1, [&](int64_t begin, int64_t end) {
    SingleThreadBlas one_thread;
    std::vector<acc_t> qbuf, kbuf, vbuf;
    std::vector<acc_t> s(kFwdBlockQ * block_k), o(kFwdBlockQ * D), m(kFwdBlockQ), l(kFwdBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / n_qblocks, qs = (task % n_qblocks) * kFwdBlockQ;
      const int64_t b = bh / sh.H, mq = std::min(kFwdBlockQ, sh.Sq - qs);
      const Visibility vis = visibility_for(b, sh, causal, pad, seg);
      int32_t qlo, qhi;
      vis.seg_range(qs, mq, &qlo, &qhi);
      const acc_t* qa = as_acc(q + (bh * sh.Sq + qs) * D, mq * D, qbuf);
      const scalar_t* kb_base = k + sh.kv_row(bh) * sh.Sk * D;
      const scalar_t* vb_base = v + sh.kv_row(bh) * sh.Sk * D;
      std::fill(o.begin(), o.end(), acc_t(0));
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), acc_t(0));
      const int64_t k_end = causal ? std::min(sh.Sk, qs + mq) : sh.Sk;
      for (int64_t ks = 0; ks < k_end; ks += block_k) {
        const int64_t nk = std::min(block_k, k_end - ks);
        const auto kind = vis.classify(qs, mq, ks, nk, qlo, qhi);
        if (kind == Visibility::kSkip) continue;
        const acc_t* ka = as_acc(kb_base + ks * D, nk * D, kbuf);
        gemm_abt<acc_t>(mq, nk, D, scale, qa, D, ka, D, acc_t(0), s.data(), nk);
        if (kind == Visibility::kPartial) vis.apply(s.data(), nk, qs, mq, ks, nk);
        for (int64_t i = 0; i < mq; ++i) {
          acc_t* si = s.data() + i * nk;
          const acc_t m_new = std::max(m[i], row_max(si, nk));
          if (m_new == ninf) {  // nothing visible yet in this row
            std::fill(si, si + nk, acc_t(0));
            continue;
          }
          const acc_t row_sum = exp_shift_sum(si, nk, m_new);
          const acc_t alpha = std::exp(m[i] - m_new);  // 0 on the first visible block
          if (alpha != acc_t(1)) {
            acc_t* oi = o.data() + i * D;
            for (int64_t d = 0; d < D; ++d) oi[d] *= alpha;
          }
          l[i] = l[i] * alpha + row_sum;
          m[i] = m_new;
        }
        const acc_t* va = as_acc(vb_base + ks * D, nk * D, vbuf);
        gemm_ab<acc_t>(mq, D, nk, s.data(), nk, va, D, acc_t(1), o.data(), D);
      }
      scalar_t* out_blk = out + (bh * sh.Sq + qs) * D;
      for (int64_t i = 0; i < mq; ++i) {
        const bool empty = !(l[i] > acc_t(0));
        const acc_t inv = empty ? acc_t(0) : acc_t(1) / l[i];
        for (int64_t d = 0; d < D; ++d) out_blk[i * D + d] = static_cast<scalar_t>(o[i * D + d] * inv);
        lse[bh * sh.Sq + qs + i] = empty ? std::numeric_limits<acc_t>::infinity() : m[i] + std::log(l[i]);
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* dout, const scalar_t* q, const scalar_t* k, const scalar_t* v,
                   const scalar_t* out, const acc_type_t<scalar_t>* lse, scalar_t* dq, scalar_t* dk,
                   scalar_t* dv, const Shape& sh, bool causal, const bool* pad,
                   const int32_t* seg, double scale_d) {
  using acc_t = acc_type_t<scalar_t>;
  const int64_t D = sh.D, Sq = sh.Sq, Sk = sh.Sk, G = sh.group();
  const acc_t scale = static_cast<acc_t>(scale_d);
  // One (batch, kv head, key range) per task: dK/dV of a key block gather over every query
  // block of all G query heads that share it (no atomics, a fixed order: deterministic), and
  // the group's dQ over the range's key blocks. The G query heads of a group are adjacent in
  // q, so the group's rows form one contiguous (G * Sq, D) block. With fewer (batch, kv head)
  // pairs than threads (multi-query, small batches) the key blocks are split into ranges; each
  // range's dQ goes to its own fp32 slice, summed afterwards in range order.
  const int64_t n_pairs = sh.B * sh.Hkv, n_kblocks = (Sk + kBwdBlockK - 1) / kBwdBlockK;
  const int64_t n_split = std::max<int64_t>(
      1, std::min<int64_t>(n_kblocks, at::divup(at::get_num_threads(), std::max<int64_t>(n_pairs, 1))));
  const int64_t kblocks_per_split = (n_kblocks + n_split - 1) / n_split;
  const int64_t dq_numel = sh.B * sh.H * Sq * D;
  std::vector<acc_t> dq_parts(n_split > 1 ? n_split * dq_numel : 0);
  at::parallel_for(0, n_pairs * n_split, 1, [&](int64_t begin, int64_t end) {
    SingleThreadBlas one_thread;
    std::vector<acc_t> qbuf, kbuf, vbuf, dobuf, obuf;
    std::vector<acc_t> p(kBwdBlockQ * kBwdBlockK), dp(kBwdBlockQ * kBwdBlockK), delta(G * Sq), dq_acc(G * Sq * D);
    std::vector<acc_t> dk_acc(kBwdBlockK * D), dv_acc(kBwdBlockK * D);
    std::vector<int32_t> qlo((Sq + kBwdBlockQ - 1) / kBwdBlockQ), qhi(qlo.size());
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bkv = task / n_split, split = task % n_split;
      const int64_t k_begin = split * kblocks_per_split * kBwdBlockK;
      const int64_t k_end = std::min(Sk, k_begin + kblocks_per_split * kBwdBlockK);
      const int64_t b = bkv / sh.Hkv, bh0 = b * sh.H + (bkv % sh.Hkv) * G;  // first query head
      const Visibility vis = visibility_for(b, sh, causal, pad, seg);
      const acc_t* qa = as_acc(q + bh0 * Sq * D, G * Sq * D, qbuf);
      const acc_t* doa = as_acc(dout + bh0 * Sq * D, G * Sq * D, dobuf);
      const acc_t* oa = as_acc(out + bh0 * Sq * D, G * Sq * D, obuf);
      const acc_t* ka = as_acc(k + bkv * Sk * D, Sk * D, kbuf);
      const acc_t* va = as_acc(v + bkv * Sk * D, Sk * D, vbuf);
      const acc_t* lse_g = lse + bh0 * Sq;
      for (int64_t i = 0; i < G * Sq; ++i) {  // delta_i = dO_i . O_i = sum_j P_ij dP_ij
        acc_t acc = 0;
        for (int64_t d = 0; d < D; ++d) acc += doa[i * D + d] * oa[i * D + d];
        delta[i] = acc;
      }
      for (size_t qb = 0; qb < qlo.size(); ++qb)
        vis.seg_range(qb * kBwdBlockQ, std::min(kBwdBlockQ, Sq - int64_t(qb) * kBwdBlockQ), &qlo[qb], &qhi[qb]);
      std::fill(dq_acc.begin(), dq_acc.end(), acc_t(0));
      for (int64_t ks = k_begin; ks < k_end; ks += kBwdBlockK) {
        const int64_t nk = std::min(kBwdBlockK, Sk - ks);
        std::fill(dk_acc.begin(), dk_acc.end(), acc_t(0));
        std::fill(dv_acc.begin(), dv_acc.end(), acc_t(0));
        const int64_t q_first = causal ? (ks / kBwdBlockQ) * kBwdBlockQ : 0;  // earlier rows see none of these keys
        for (int64_t g = 0; g < G; ++g) {
          const int64_t row0 = g * Sq;  // this head's first row in the group's (G * Sq, D) block
          for (int64_t qs = q_first; qs < Sq; qs += kBwdBlockQ) {
            const int64_t mq = std::min(kBwdBlockQ, Sq - qs), qb = qs / kBwdBlockQ;
            const auto kind = vis.classify(qs, mq, ks, nk, qlo[qb], qhi[qb]);
            if (kind == Visibility::kSkip) continue;
            const acc_t* qi = qa + (row0 + qs) * D;
            const acc_t* doi = doa + (row0 + qs) * D;
            gemm_abt<acc_t>(mq, nk, D, scale, qi, D, ka + ks * D, D, acc_t(0), p.data(), nk);
            if (kind == Visibility::kPartial) vis.apply(p.data(), nk, qs, mq, ks, nk);
            for (int64_t i = 0; i < mq; ++i) exp_shift_sum(p.data() + i * nk, nk, lse_g[row0 + qs + i]);
            gemm_atb<acc_t>(nk, D, mq, p.data(), nk, doi, D, dv_acc.data(), D);  // dV += P^T dO
            gemm_abt<acc_t>(mq, nk, D, acc_t(1), doi, D, va + ks * D, D, acc_t(0), dp.data(), nk);
            for (int64_t i = 0; i < mq; ++i) {  // dS = P * (dP - delta) * scale, kept in dp
              acc_t* dpi = dp.data() + i * nk;
              const acc_t* pi = p.data() + i * nk;
              const acc_t di = delta[row0 + qs + i];
              for (int64_t j = 0; j < nk; ++j) dpi[j] = pi[j] * (dpi[j] - di) * scale;
            }
            gemm_ab<acc_t>(mq, D, nk, dp.data(), nk, ka + ks * D, D, acc_t(1), dq_acc.data() + (row0 + qs) * D, D);
            gemm_atb<acc_t>(nk, D, mq, dp.data(), nk, qi, D, dk_acc.data(), D);  // dK += dS^T Q
          }
        }
        for (int64_t x = 0; x < nk * D; ++x) {
          dk[(bkv * Sk + ks) * D + x] = static_cast<scalar_t>(dk_acc[x]);
          dv[(bkv * Sk + ks) * D + x] = static_cast<scalar_t>(dv_acc[x]);
        }
      }
      if (n_split == 1) {
        for (int64_t x = 0; x < G * Sq * D; ++x) dq[bh0 * Sq * D + x] = static_cast<scalar_t>(dq_acc[x]);
      } else {
        std::copy(dq_acc.begin(), dq_acc.end(), dq_parts.begin() + split * dq_numel + bh0 * Sq * D);
      }
    }
  });
  if (n_split == 1) return;
  at::parallel_for(0, dq_numel, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t x = begin; x < end; ++x) {
      acc_t acc = 0;
      for (int64_t s = 0; s < n_split; ++s) acc += dq_parts[s * dq_numel + x];
      dq[x] = static_cast<scalar_t>(acc);
    }
  });
}

Shape shape_of(const at::Tensor& q, const at::Tensor& k) {
  return Shape{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

const bool* pad_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<bool>() : nullptr;
}
const int32_t* seg_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<int32_t>() : nullptr;
}

at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_cpu_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
    const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& segment_ids, double scale) {
  const Shape sh = shape_of(q, k);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({sh.B, sh.H, sh.Sq}, q.options().dtype(acc_dtype(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_cpu_forward", [&] {
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(), lse.data_ptr<acc_type_t<scalar_t>>(), sh,
                           causal, pad_ptr(key_padding_mask), seg_ptr(segment_ids), scale);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_cpu_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal,
    const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& segment_ids, double scale) {
  const Shape sh = shape_of(q, k);
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_cpu_backward", [&] {
    backward_impl<scalar_t>(grad_out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(),
                            k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            out.data_ptr<scalar_t>(), lse.data_ptr<acc_type_t<scalar_t>>(),
                            dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                            dv.data_ptr<scalar_t>(), sh, causal, pad_ptr(key_padding_mask),
                            seg_ptr(segment_ids), scale);
  });
  return {dq, dk, dv};
}

}  // namespace ptft
