// CPU kernel for the chunked contrastive log-sum-exps: tiles of S come from one GEMM each
// (at::mm_out / addmm_, multithreaded BLAS); exp / max / sums are fused, vectorised passes
// over the tile, parallel over rows (and over columns for the column direction).
#if defined(__AVX2__) && !defined(CPU_CAPABILITY)
// Built with -march=native: use ATen's AVX2 Vectorized (Sleef exp) instead of the scalar one.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include "contrastive/contrastive_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ptft {
namespace {

using at::vec::Vectorized;

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

template <typename T>
T span_max(const T* p, int64_t len) {
  using V = Vectorized<T>;
  int64_t k = 0;
  V vm(kNegInf<T>);
  for (; k + V::size() <= len; k += V::size()) vm = at::vec::maximum(vm, V::loadu(p + k));
  T buf[V::size()];
  vm.store(buf);
  T m = *std::max_element(buf, buf + V::size());
  for (; k < len; ++k) m = std::max(m, p[k]);
  return m;
}

template <typename T>
T span_sum_exp(const T* p, int64_t len, T shift) {
  using V = Vectorized<T>;
  int64_t k = 0;
  V acc(T(0)), vs(shift);
  for (; k + V::size() <= len; k += V::size()) acc = acc + (V::loadu(p + k) - vs).exp();
  T buf[V::size()];
  acc.store(buf);
  T s = 0;
  for (int64_t q = 0; q < V::size(); ++q) s += buf[q];
  for (; k < len; ++k) s += std::exp(p[k] - shift);
  return s;
}

// Backward over a contiguous span of one tile row, in place: raw logits -> scale * dS.
// Returns sum(dS * raw) for dscale. gr: g_row_i (0 if unused); cols: g_col / col_lse (nullable).
template <typename T>
T span_backward(T* p, int64_t len, T scale, T gr, T rlse, const T* gc, const T* clse) {
  using V = Vectorized<T>;
  const V vsc(scale), vgr(gr), vrl(rlse);
  V vacc(T(0));
  int64_t k = 0;
  for (; k + V::size() <= len; k += V::size()) {
    V raw = V::loadu(p + k), t = raw * vsc, d(T(0));
    if (gr != T(0)) d = vgr * (t - vrl).exp();
    if (gc) d = d + V::loadu(gc + k) * (t - V::loadu(clse + k)).exp();
    vacc = vacc + d * raw;
    (d * vsc).store(p + k);
  }
  T buf[V::size()];
  vacc.store(buf);
  T acc = 0;
  for (int64_t q = 0; q < V::size(); ++q) acc += buf[q];
  for (; k < len; ++k) {
    T raw = p[k], t = raw * scale, d = 0;
    if (gr != T(0)) d = gr * std::exp(t - rlse);
    if (gc) d += gc[k] * std::exp(t - clse[k]);
    acc += d * raw;
    p[k] = d * scale;
  }
  return acc;
}

// Column direction of a scaled tile (excluded entries already -inf): online update of the
// running column max / sum for columns [c0, c1).
template <typename T>
void tile_cols_update(const T* tile, int64_t rows, int64_t cols, int64_t c0, int64_t c1, T* cmax, T* csum) {
  using V = Vectorized<T>;
  constexpr int64_t W = 64;
  T mx[W], sm[W];
  for (int64_t c = c0; c < c1; c += W) {
    const int64_t w = std::min(W, c1 - c);
    std::fill(mx, mx + w, kNegInf<T>);
    std::fill(sm, sm + w, T(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* p = tile + r * cols + c;
      int64_t k = 0;
      for (; k + V::size() <= w; k += V::size()) at::vec::maximum(V::loadu(mx + k), V::loadu(p + k)).store(mx + k);
      for (; k < w; ++k) mx[k] = std::max(mx[k], p[k]);
    }
    for (int64_t k = 0; k < w; ++k) mx[k] = std::max(mx[k], cmax[c + k]);
    for (int64_t r = 0; r < rows; ++r) {
      const T* p = tile + r * cols + c;
      int64_t k = 0;
      for (; k + V::size() <= w; k += V::size())
        (V::loadu(sm + k) + (V::loadu(p + k) - V::loadu(mx + k)).exp()).store(sm + k);
      for (; k < w; ++k) sm[k] += std::exp(p[k] - mx[k]);
    }
    for (int64_t k = 0; k < w; ++k) {
      if (mx[k] == kNegInf<T>) continue;  // every entry so far excluded
      csum[c + k] = csum[c + k] * std::exp(cmax[c + k] - mx[k]) + sm[k];
      cmax[c + k] = mx[k];
    }
  }
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& af, const at::Tensor& bf, T scale,
                                                const int64_t* excl, bool want_cols, int64_t chunk) {
  const int64_t n = af.size(0), m = bf.size(0);
  auto opts = af.options();
  at::Tensor row_lse = at::empty({n}, opts);
  at::Tensor cmax_t = at::full({want_cols ? m : 0}, kNegInf<T>, opts);
  at::Tensor csum_t = at::zeros({want_cols ? m : 0}, opts);
  at::Tensor tile_buf = at::empty({std::min(chunk, n) * std::min(chunk, m)}, opts);
  std::vector<T> rmax(chunk), rsum(chunk);
  T* rl = row_lse.data_ptr<T>();
  T* cmax = cmax_t.data_ptr<T>();
  T* csum = csum_t.data_ptr<T>();
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t ci = std::min(chunk, n - i0);
    std::fill(rmax.begin(), rmax.end(), kNegInf<T>);
    std::fill(rsum.begin(), rsum.end(), T(0));
    for (int64_t j0 = 0; j0 < m; j0 += chunk) {
      const int64_t cj = std::min(chunk, m - j0);
      at::Tensor tile = tile_buf.narrow(0, 0, ci * cj).view({ci, cj});  // (ci, cj)
      at::mm_out(tile, af.narrow(0, i0, ci), bf.narrow(0, j0, cj).t());
      T* tp = tile.data_ptr<T>();
      at::parallel_for(0, ci, 16, [&](int64_t r0, int64_t r1) {
        using V = Vectorized<T>;
        for (int64_t r = r0; r < r1; ++r) {
          T* p = tp + r * cj;
          int64_t k = 0;
          for (; k + V::size() <= cj; k += V::size()) (V::loadu(p + k) * V(scale)).store(p + k);
          for (; k < cj; ++k) p[k] *= scale;
          if (excl) {
            const int64_t e = excl[i0 + r] - j0;
            if (e >= 0 && e < cj) p[e] = kNegInf<T>;
          }
          const T mx = std::max(rmax[r], span_max(p, cj));
          if (mx == kNegInf<T>) continue;
          rsum[r] = rsum[r] * std::exp(rmax[r] - mx) + span_sum_exp(p, cj, mx);
          rmax[r] = mx;
        }
      });
      if (want_cols) {
        at::parallel_for(0, cj, 64, [&](int64_t c0, int64_t c1) {
          tile_cols_update(tp, ci, cj, c0, c1, cmax + j0, csum + j0);
        });
      }
    }
    for (int64_t r = 0; r < ci; ++r) rl[i0 + r] = rmax[r] + std::log(rsum[r]);
  }
  at::Tensor col_lse = want_cols ? cmax_t + csum_t.log() : cmax_t;
  return {row_lse, col_lse};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(
    const at::Tensor& af, const at::Tensor& bf, T scale, const int64_t* excl, const T* rl, const T* cl,
    const T* gr, const T* gc, int64_t chunk) {
  const int64_t n = af.size(0), m = bf.size(0);
  at::Tensor da = at::zeros_like(af), db = at::zeros_like(bf);
  at::Tensor tile_buf = at::empty({std::min(chunk, n) * std::min(chunk, m)}, af.options());
  std::vector<T> row_ds(chunk);
  double dscale = 0;
  for (int64_t i0 = 0; i0 < n; i0 += chunk) {
    const int64_t ci = std::min(chunk, n - i0);
    for (int64_t j0 = 0; j0 < m; j0 += chunk) {
      const int64_t cj = std::min(chunk, m - j0);
      at::Tensor tile = tile_buf.narrow(0, 0, ci * cj).view({ci, cj});  // (ci, cj)
      at::Tensor a_i = af.narrow(0, i0, ci), b_j = bf.narrow(0, j0, cj);
      at::mm_out(tile, a_i, b_j.t());
      T* tp = tile.data_ptr<T>();
      const T* gcj = gc ? gc + j0 : nullptr;
      const T* clj = gc ? cl + j0 : nullptr;
      at::parallel_for(0, ci, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          T* p = tp + r * cj;
          const T g = gr ? gr[i0 + r] : T(0), lse = gr ? rl[i0 + r] : T(0);
          const int64_t e = excl ? excl[i0 + r] - j0 : -1;
          if (e < 0 || e >= cj) {
            row_ds[r] = span_backward(p, cj, scale, g, lse, gcj, clj);
          } else {  // skip the excluded entry: its probability is exactly zero
            row_ds[r] = span_backward(p, e, scale, g, lse, gcj, clj) +
                        span_backward(p + e + 1, cj - e - 1, scale, g, lse, gcj ? gcj + e + 1 : nullptr,
                                      clj ? clj + e + 1 : nullptr);
            p[e] = 0;
          }
        }
      });
      for (int64_t r = 0; r < ci; ++r) dscale += row_ds[r];
      da.narrow(0, i0, ci).addmm_(tile, b_j);    // (ci, D) += (ci, cj) @ (cj, D)
      db.narrow(0, j0, cj).addmm_(tile.t(), a_i);  // (cj, D) += (cj, ci) @ (ci, D)
    }
  }
  return {da, db, at::scalar_tensor(dscale, af.options())};
}

const int64_t* exclude_ptr(const at::Tensor& exclude) {
  return exclude.defined() ? exclude.data_ptr<int64_t>() : nullptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> contrastive_lse_forward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, const at::Tensor& exclude,
    bool want_cols, int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, std::max(a.size(0), b.size(0))));
  const auto ct = compute_type(a);
  at::Tensor af = a.to(ct).contiguous(), bf = b.to(ct).contiguous();
  at::Tensor ex = exclude.defined() ? exclude.contiguous() : exclude;
  if (ct == at::kDouble) return forward_impl<double>(af, bf, scale, exclude_ptr(ex), want_cols, chunk);
  return forward_impl<float>(af, bf, static_cast<float>(scale), exclude_ptr(ex), want_cols, chunk);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, const at::Tensor& exclude,
    const at::Tensor& row_lse, const at::Tensor& col_lse, const at::Tensor& g_row,
    const at::Tensor& g_col, int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, std::max(a.size(0), b.size(0))));
  const auto ct = compute_type(a);
  at::Tensor af = a.to(ct).contiguous(), bf = b.to(ct).contiguous();
  at::Tensor ex = exclude.defined() ? exclude.contiguous() : exclude;
  auto prep = [&](const at::Tensor& t) { return t.defined() ? t.to(ct).contiguous() : t; };
  at::Tensor rl = prep(row_lse), cl = prep(col_lse), gr = prep(g_row), gc = prep(g_col);
  if (ct == at::kDouble) {
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; };
    return backward_impl<double>(af, bf, scale, exclude_ptr(ex), ptr(rl), ptr(cl), ptr(gr), ptr(gc), chunk);
  }
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  return backward_impl<float>(af, bf, static_cast<float>(scale), exclude_ptr(ex), ptr(rl), ptr(cl), ptr(gr),
                              ptr(gc), chunk);
}

}  // namespace ptft
