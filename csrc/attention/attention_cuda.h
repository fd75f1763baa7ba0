// Plain C++ entry points of the CUDA attention kernels (no torch types: the .cu file
// is compiled by nvcc alone). q/out/grad_out (B, H, S_q, D), k/v (B, Hkv, S_k, D) with Hkv
// dividing H (query head h reads kv head h / (H / Hkv)); lse/delta (B, H, S_q). Inputs are read
// by their batch/head/row strides (a model's transposed (B, S, H, D) projections need no copy;
// the head dim must be contiguous); outputs (out, lse, dq, dk, dv) are written contiguous.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ptft {

enum class AttnDtype { kFloat32, kFloat16, kBFloat16 };

constexpr int kAttnCudaMaxHeadDim = 128;

// Element strides of a (B, H, S, D) input along B, H and S; its D stride is 1.
struct AttnStrides {
  int64_t b, h, s;
};

struct AttnCudaParams {
  int B, H, Hkv, Sq, Sk, D;  // D <= kAttnCudaMaxHeadDim; Hkv divides H
  AttnStrides q, k, v;       // the inputs' strides
  AttnStrides dout, out;     // backward only: grad_out and the forward's out
  bool causal;
  const bool* key_padding_mask;  // (B, Sk), true = padding key; or nullptr
  const int32_t* segment_ids;    // (B, Sq); or nullptr
  float scale;
};

// out in the input dtype; lse fp32 (natural log, +inf for rows that see no key).
cudaError_t attention_cuda_forward(AttnDtype dtype, const void* q, const void* k, const void* v,
                                   void* out, float* lse, const AttnCudaParams& p,
                                   cudaStream_t stream);

// delta is an fp32 (B, H, Sq) workspace; dq/dk/dv are written (not accumulated).
cudaError_t attention_cuda_backward(AttnDtype dtype, const void* grad_out, const void* q,
                                    const void* k, const void* v, const void* out,
                                    const float* lse, float* delta, void* dq, void* dk, void* dv,
                                    const AttnCudaParams& p, cudaStream_t stream);

}  // namespace ptft
