// Row/column log-sum-exps of S = scale * a @ b.T computed tile by tile (online), and their
// backward; the (n, m) matrix S never exists whole. Float32 and float64 compute; bf16/fp16
// inputs are upcast once to float32 (O(N*D)), so all accumulation is in float32.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

namespace ptft {

// exclude: undefined, or int64 (n,) with the column left out of row i (-1: none).
// Returns (row_lse (n,), col_lse (m,) or (0,)) in the compute dtype.
std::tuple<at::Tensor, at::Tensor> contrastive_lse_forward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, const at::Tensor& exclude,
    bool want_cols, int64_t chunk);

// g_row (n,) / g_col (m,): gradients of the loss w.r.t. row_lse / col_lse (undefined: zero).
// Returns (da, db, dscale) with da, db in the compute dtype and dscale 0-dim.
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, const at::Tensor& exclude,
    const at::Tensor& row_lse, const at::Tensor& col_lse, const at::Tensor& g_row,
    const at::Tensor& g_col, int64_t chunk);

}  // namespace ptft
