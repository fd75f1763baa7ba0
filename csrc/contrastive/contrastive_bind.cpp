// Argument checks and bindings for the contrastive log-sum-exp kernels (no math here).
#include "common/bind.h"
#include "contrastive/contrastive_cpu.h"

#ifdef PTFT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "contrastive/contrastive_cuda.h"
#endif

#include <optional>

namespace ptft {
namespace {

using OptTensor = std::optional<at::Tensor>;

at::Tensor opt(const OptTensor& t) { return t.has_value() ? *t : at::Tensor(); }

void check_inputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale, const OptTensor& exclude,
                  int64_t chunk) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "contrastive: a and b must be 2-D (N, D), got ", a.sizes(), " and ",
              b.sizes());
  TORCH_CHECK(a.size(1) == b.size(1), "contrastive: a and b must share the feature dim D, got ", a.size(1),
              " and ", b.size(1));
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "contrastive: a and b dtypes differ (", a.scalar_type(), " vs ",
              b.scalar_type(), ")");
  TORCH_CHECK(a.is_floating_point(), "contrastive: a must be floating point, got ", a.scalar_type());
  TORCH_CHECK(a.device() == b.device() && a.device() == scale.device(),
              "contrastive: a, b and scale must be on one device");
  TORCH_CHECK(scale.numel() == 1, "contrastive: scale must have one element, got shape ", scale.sizes());
  TORCH_CHECK(chunk > 0, "contrastive: chunk must be positive, got ", chunk);
  if (exclude.has_value()) {
    TORCH_CHECK(exclude->scalar_type() == at::kLong && exclude->dim() == 1 && exclude->size(0) == a.size(0),
                "contrastive: exclude must be int64 of shape (n,) = (", a.size(0), ",), got ",
                exclude->scalar_type(), " ", exclude->sizes());
    TORCH_CHECK(exclude->device() == a.device(), "contrastive: exclude must be on the device of a");
  }
}

#ifdef PTFT_WITH_CUDA
void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "contrastive cuda: ", what, " launch failed: ", cudaGetErrorString(err));
}

int cuda_dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kContrastiveF32;
    case at::kHalf: return kContrastiveF16;
    case at::kBFloat16: return kContrastiveBF16;
    default: TORCH_CHECK(false, "contrastive cuda: a must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return 0;
}

// Row i excludes column ex[i] -> column j excludes row t[j] (the exclusion is one-to-one).
at::Tensor transpose_exclude(const at::Tensor& ex, int64_t m) {
  at::Tensor t = at::full({m}, -1, ex.options());
  at::Tensor rows = at::nonzero(ex >= 0).squeeze(1);
  t.index_put_({ex.index_select(0, rows)}, rows);
  return t;
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& a0, const at::Tensor& b0, const at::Tensor& scale,
                                                const at::Tensor& exclude, bool want_cols) {
  c10::cuda::CUDAGuard guard(a0.device());
  at::Tensor a = a0.contiguous(), b = b0.contiguous();
  at::Tensor sc = scale.reshape({1}).to(at::kFloat).contiguous();
  at::Tensor ex = exclude.defined() ? exclude.contiguous() : exclude;
  const int64_t n = a.size(0), m = b.size(0), d = a.size(1);
  auto f32 = a.options().dtype(at::kFloat);
  at::Tensor row_lse = at::empty({n}, f32), col_lse = at::empty({want_cols ? m : 0}, f32);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const int dt = cuda_dtype_code(a);
  const int64_t* ex_ptr = ex.defined() ? ex.data_ptr<int64_t>() : nullptr;
  check_launch(contrastive_row_lse_cuda(a.data_ptr(), b.data_ptr(), dt, sc.data_ptr<float>(), ex_ptr, n, m, d,
                                        row_lse.data_ptr<float>(), stream),
               "row lse");
  if (want_cols) {
    // Column lse of S is the row lse of S.T = scale * b @ a.T, excluding the transposed pairs.
    at::Tensor ex_t;
    if (ex.defined()) ex_t = transpose_exclude(ex, m);
    check_launch(contrastive_row_lse_cuda(b.data_ptr(), a.data_ptr(), dt, sc.data_ptr<float>(),
                                          ex_t.defined() ? ex_t.data_ptr<int64_t>() : nullptr, m, n, d,
                                          col_lse.data_ptr<float>(), stream),
                 "column lse");
  }
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& a0, const at::Tensor& b0,
                                                             const at::Tensor& scale, const at::Tensor& exclude,
                                                             const at::Tensor& row_lse, const at::Tensor& col_lse,
                                                             const at::Tensor& g_row, const at::Tensor& g_col) {
  c10::cuda::CUDAGuard guard(a0.device());
  at::Tensor a = a0.contiguous(), b = b0.contiguous();
  at::Tensor sc = scale.reshape({1}).to(at::kFloat).contiguous();
  const int64_t n = a.size(0), m = b.size(0), d = a.size(1);
  auto f32 = a.options().dtype(at::kFloat);
  auto prep = [](const at::Tensor& t) { return t.defined() ? t.to(at::kFloat).contiguous() : t; };
  auto ptr = [](const at::Tensor& t) -> const float* { return t.defined() ? t.data_ptr<float>() : nullptr; };
  at::Tensor rl = prep(row_lse), cl = prep(col_lse), gr = prep(g_row), gc = prep(g_col);
  at::Tensor ex = exclude.defined() ? exclude.contiguous() : exclude;
  at::Tensor ex_t = ex.defined() ? transpose_exclude(ex, m) : ex;
  const int dt = cuda_dtype_code(a);
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor da = at::empty({n, d}, f32), db = at::empty({m, d}, f32);
  at::Tensor ds_partial = at::zeros({contrastive_cuda_row_blocks(n)}, f32);
  check_launch(contrastive_grad_rows_cuda(a.data_ptr(), b.data_ptr(), dt, sc.data_ptr<float>(),
                                          ex.defined() ? ex.data_ptr<int64_t>() : nullptr, ptr(rl), ptr(gr), ptr(cl),
                                          ptr(gc), n, m, d, da.data_ptr<float>(), ds_partial.data_ptr<float>(), stream),
               "grad a");
  // dS.T has the same form with the roles of rows and columns swapped.
  check_launch(contrastive_grad_rows_cuda(b.data_ptr(), a.data_ptr(), dt, sc.data_ptr<float>(),
                                          ex_t.defined() ? ex_t.data_ptr<int64_t>() : nullptr, ptr(cl), ptr(gc),
                                          ptr(rl), ptr(gr), m, n, d, db.data_ptr<float>(), nullptr, stream),
               "grad b");
  return {da, db, ds_partial.sum()};
}
#endif

std::tuple<at::Tensor, at::Tensor> lse_forward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale,
                                               const OptTensor& exclude, bool want_cols, int64_t chunk) {
  check_inputs(a, b, scale, exclude, chunk);
  if (a.is_cuda()) {
#ifdef PTFT_WITH_CUDA
    return forward_cuda(a, b, scale, opt(exclude), want_cols);
#else
    TORCH_CHECK(false, "contrastive: ptft_engine._C was built without CUDA kernels");
#endif
  }
  TORCH_CHECK(a.device().is_cpu(), "contrastive: unsupported device ", a.device());
  return contrastive_lse_forward_cpu(a, b, scale.item<double>(), opt(exclude), want_cols, chunk);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_backward(const at::Tensor& a, const at::Tensor& b,
                                                            const at::Tensor& scale, const OptTensor& exclude,
                                                            const at::Tensor& row_lse, const at::Tensor& col_lse,
                                                            const OptTensor& g_row, const OptTensor& g_col,
                                                            int64_t chunk) {
  check_inputs(a, b, scale, exclude, chunk);
  TORCH_CHECK(row_lse.numel() == a.size(0), "contrastive: row_lse must have n = ", a.size(0), " entries");
  TORCH_CHECK(!g_row.has_value() || g_row->numel() == a.size(0), "contrastive: g_row must have n entries");
  TORCH_CHECK(!g_col.has_value() || (g_col->numel() == b.size(0) && col_lse.numel() == b.size(0)),
              "contrastive: g_col and col_lse must have m = ", b.size(0), " entries");
  if (a.is_cuda()) {
#ifdef PTFT_WITH_CUDA
    return backward_cuda(a, b, scale, opt(exclude), row_lse, col_lse, opt(g_row), opt(g_col));
#else
    TORCH_CHECK(false, "contrastive: ptft_engine._C was built without CUDA kernels");
#endif
  }
  TORCH_CHECK(a.device().is_cpu(), "contrastive: unsupported device ", a.device());
  return contrastive_lse_backward_cpu(a, b, scale.item<double>(), opt(exclude), row_lse, col_lse, opt(g_row),
                                      opt(g_col), chunk);
}

}  // namespace

void bind_contrastive(pybind11::module_& m) {
  m.def("contrastive_lse_forward", &lse_forward, pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("scale"),
        pybind11::arg("exclude"), pybind11::arg("want_cols"), pybind11::arg("chunk"),
        "(row_lse, col_lse) of S = scale * a @ b.T, chunked; col_lse is empty unless want_cols");
  m.def("contrastive_lse_backward", &lse_backward, pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("scale"),
        pybind11::arg("exclude"), pybind11::arg("row_lse"), pybind11::arg("col_lse"), pybind11::arg("g_row"),
        pybind11::arg("g_col"), pybind11::arg("chunk"),
        "(da, db, dscale) given dLoss/d row_lse and dLoss/d col_lse (None: zero)");
}

}  // namespace ptft
