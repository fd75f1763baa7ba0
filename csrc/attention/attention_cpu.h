// C++ CPU flash-style attention (fp32, bf16 with fp32 accumulation, fp64 for gradcheck).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace ptft {

// q (B, H, S_q, D), k/v (B, Hkv, S_k, D) contiguous with Hkv dividing H (query head h
// reads kv head h / (H / Hkv): grouped-query attention); dk/dv come back with Hkv heads; key_padding_mask bool (B, S_k) with
// True = padding; segment_ids int32 (B, S). Returns out (B, H, S_q, D) in q's dtype and
// lse (B, H, S_q) in the accumulation dtype (+inf for rows that see no key).
std::tuple<at::Tensor, at::Tensor> attention_cpu_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
    const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& segment_ids, double scale);

// Recomputes probabilities from lse; returns (dq, dk, dv) in the inputs' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_cpu_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal,
    const std::optional<at::Tensor>& key_padding_mask,
    const std::optional<at::Tensor>& segment_ids, double scale);

}  // namespace ptft
