// Flash-style attention on CUDA. fp16/bf16 on sm_80+: WMMA tensor-core tiles, fp32 accumulate
// (attn_fwd_tc_kernel, attn_bwd_dkdv_tc_kernel, attn_bwd_dq_tc_kernel). fp32 (or pre-sm_80
// devices): scalar FMA tiles in shared memory:
// forward with online softmax saving the log-sum-exp, backward recomputing probabilities
// in a dK/dV kernel (one key block per CTA) and a dQ kernel (one query block per CTA), so
// no S x S matrix and no atomics. fp32/fp16/bf16 inputs, fp32 accumulation, D <= 128.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include <mma.h>

#include "attention/attention_cuda.h"

namespace ptft {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBlockM = 32;                    // query rows per tile
constexpr int kBlockN = 32;                    // keys per tile
constexpr int kThreads = 128;                  // 4 threads own one row (or key) of a tile
constexpr int kThreadsPerRow = kThreads / kBlockM;
constexpr int kDimsPerThread = kAttnCudaMaxHeadDim / kThreadsPerRow;
static_assert(kBlockM == kBlockN, "the row-ownership maps assume square tiles");

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Offset of the (S, D) matrix of batch b, head h in a strided input.
__host__ __device__ __forceinline__ int64_t head_offset(const AttnStrides& st, int b, int h) {
  return b * st.b + h * st.h;
}

// The kv head that query head (bh % H) of bh = b * H + h reads (grouped-query attention).
__host__ __device__ __forceinline__ int kv_head(const AttnCudaParams& p, int bh) { return (bh % p.H) / (p.H / p.Hkv); }

// Offset of a contiguous (S, D) output matrix number `mat` (b * heads + h).
__host__ __device__ __forceinline__ int64_t out_offset(int mat, int S, int D) {
  return static_cast<int64_t>(mat) * S * D;
}

__device__ __forceinline__ bool visible(const AttnCudaParams& p, int b, int i, int j) {
  if (i >= p.Sq || j >= p.Sk) return false;
  if (p.causal && j > i) return false;
  if (p.key_padding_mask && p.key_padding_mask[static_cast<int64_t>(b) * p.Sk + j]) return false;
  if (p.segment_ids) {
    const int32_t* seg = p.segment_ids + static_cast<int64_t>(b) * p.Sq;
    if (seg[i] != seg[j]) return false;
  }
  return true;
}

// Copies rows [row0, row0 + n_rows) of a (S, D) matrix whose rows are row_stride elements apart
// into a float tile with leading dimension ld (D + 1 keeps column walks free of bank
// conflicts); rows past S are zero.
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, int ld, const T* src, int64_t row_stride, int row0,
                                          int n_rows, int S, int D, float mul) {
  for (int idx = threadIdx.x; idx < n_rows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    tile[r * ld + d] = row0 + r < S ? to_float(src[(row0 + r) * row_stride + d]) * mul : 0.f;
  }
}

__device__ __forceinline__ float dot_rows(const float* a, const float* b, int D) {
  float acc = 0.f;
  for (int d = 0; d < D; ++d) acc = fmaf(a[d], b[d], acc);
  return acc;
}

// Reduction over the 4 consecutive lanes that own one row.
__device__ __forceinline__ float group_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float group_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                            const T* __restrict__ v, T* __restrict__ out,
                                                            float* __restrict__ lse, AttnCudaParams p) {
  extern __shared__ float smem[];
  const int ld = p.D + 1, lds = kBlockN + 1;
  float* qs = smem;                 // (BM, D), pre-scaled
  float* ks = qs + kBlockM * ld;    // (BN, D)
  float* vs = ks + kBlockN * ld;    // (BN, D)
  float* ss = vs + kBlockN * ld;    // (BM, BN) scores, then probabilities
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = kv_head(p, bh), q0 = blockIdx.x * kBlockM;
  const T* qm = q + head_offset(p.q, b, h);
  const T* km = k + head_offset(p.k, b, hk);
  const T* vm = v + head_offset(p.v, b, hk);
  const int64_t o_off = out_offset(bh, p.Sq, p.D);
  const int row = threadIdx.x / kThreadsPerRow, lane = threadIdx.x % kThreadsPerRow;

  load_tile(qs, ld, qm, p.q.s, q0, kBlockM, p.Sq, p.D, p.scale);
  float o[kDimsPerThread];
#pragma unroll
  for (int t = 0; t < kDimsPerThread; ++t) o[t] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int k_end = p.causal ? min(p.Sk, q0 + kBlockM) : p.Sk;  // later keys are invisible
  for (int k0 = 0; k0 < k_end; k0 += kBlockN) {
    __syncthreads();  // previous tile fully consumed
    load_tile(ks, ld, km, p.k.s, k0, kBlockN, p.Sk, p.D, 1.f);
    load_tile(vs, ld, vm, p.v.s, k0, kBlockN, p.Sk, p.D, 1.f);
    __syncthreads();
    for (int e = threadIdx.x; e < kBlockM * kBlockN; e += kThreads) {
      const int i = e / kBlockN, j = e % kBlockN;
      ss[i * lds + j] = visible(p, b, q0 + i, k0 + j) ? dot_rows(qs + i * ld, ks + j * ld, p.D) : -INFINITY;
    }
    __syncthreads();
    float* srow = ss + row * lds;
    float mx = -INFINITY;
    for (int j = lane; j < kBlockN; j += kThreadsPerRow) mx = fmaxf(mx, srow[j]);
    const float m_new = fmaxf(m, group_max(mx));
    const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: p = 0
    float psum = 0.f;
    for (int j = lane; j < kBlockN; j += kThreadsPerRow) {
      const float pj = __expf(srow[j] - m_safe);
      srow[j] = pj;
      psum += pj;
    }
    const float alpha = __expf(m - m_safe);
    l = l * alpha + group_sum(psum);
    m = m_new;
    __syncwarp();  // the row's probabilities come from all 4 lanes of this warp
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) {
        float acc = o[t] * alpha;
        for (int j = 0; j < kBlockN; ++j) acc = fmaf(srow[j], vs[j * ld + d], acc);
        o[t] = acc;
      }
    }
  }
  const int qi = q0 + row;
  if (qi < p.Sq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) out[o_off + static_cast<int64_t>(qi) * p.D + d] = from_float<T>(o[t] * inv);
    }
    if (lane == 0) lse[static_cast<int64_t>(bh) * p.Sq + qi] = l > 0.f ? m + logf(l) : INFINITY;
  }
}

template <typename T>
__global__ void attn_bwd_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                      float* __restrict__ delta, AttnCudaParams p) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b * H + h) * Sq + i
  if (r >= static_cast<int64_t>(p.B) * p.H * p.Sq) return;
  const int bh = static_cast<int>(r / p.Sq), b = bh / p.H, h = bh % p.H;
  const int64_t i = r % p.Sq;
  const T* dorow = dout + head_offset(p.dout, b, h) + i * p.dout.s;
  const T* orow = out + head_offset(p.out, b, h) + i * p.out.s;
  float acc = 0.f;
  for (int d = 0; d < p.D; ++d) acc = fmaf(to_float(dorow[d]), to_float(orow[d]), acc);
  delta[r] = acc;
}

// P_ij and dS_ij = P_ij (dP_ij - delta_i) for a (BM, BN) tile; invisible pairs give 0.
__device__ __forceinline__ void prob_and_dscore(const AttnCudaParams& p, int b, int q0, int k0,
                                                const float* qs, const float* dos, const float* ks,
                                                const float* vs, const float* lse_s, const float* delta_s,
                                                float* ps, float* dss, int ld) {
  const int lds = kBlockN + 1;
  for (int e = threadIdx.x; e < kBlockM * kBlockN; e += kThreads) {
    const int i = e / kBlockN, j = e % kBlockN;
    float pij = 0.f, dsij = 0.f;
    if (visible(p, b, q0 + i, k0 + j)) {
      pij = __expf(p.scale * dot_rows(qs + i * ld, ks + j * ld, p.D) - lse_s[i]);
      dsij = pij * (dot_rows(dos + i * ld, vs + j * ld, p.D) - delta_s[i]);
    }
    if (ps) ps[i * lds + j] = pij;
    dss[i * lds + j] = dsij;
  }
}

__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* lse,
                                               const float* delta, int64_t row_off, int q0, int Sq) {
  for (int i = threadIdx.x; i < kBlockM; i += kThreads) {
    const bool in = q0 + i < Sq;
    lse_s[i] = in ? lse[row_off + q0 + i] : INFINITY;
    delta_s[i] = in ? delta[row_off + q0 + i] : 0.f;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
    AttnCudaParams p) {
  extern __shared__ float smem[];
  const int ld = p.D + 1, lds = kBlockN + 1;
  float* ks = smem;
  float* vs = ks + kBlockN * ld;
  float* qs = vs + kBlockN * ld;
  float* dos = qs + kBlockM * ld;
  float* ps = dos + kBlockM * ld;
  float* dss = ps + kBlockM * lds;
  float* lse_s = dss + kBlockM * lds;
  float* delta_s = lse_s + kBlockM;
  // One CTA per (key block, batch, kv head); it sums over the G query heads sharing the kv head.
  const int bkv = blockIdx.y, b = bkv / p.Hkv, group = p.H / p.Hkv, k0 = blockIdx.x * kBlockN;
  const int hk = bkv % p.Hkv, h0 = hk * group;  // the group's first query head
  const int64_t g_off = out_offset(bkv, p.Sk, p.D);
  const int key = threadIdx.x / kThreadsPerRow, lane = threadIdx.x % kThreadsPerRow;

  load_tile(ks, ld, k + head_offset(p.k, b, hk), p.k.s, k0, kBlockN, p.Sk, p.D, 1.f);
  load_tile(vs, ld, v + head_offset(p.v, b, hk), p.v.s, k0, kBlockN, p.Sk, p.D, 1.f);
  float dk_acc[kDimsPerThread], dv_acc[kDimsPerThread];
#pragma unroll
  for (int t = 0; t < kDimsPerThread; ++t) dk_acc[t] = dv_acc[t] = 0.f;
  const int q_begin = p.causal ? (k0 / kBlockM) * kBlockM : 0;  // earlier rows see none of these keys
  for (int g = 0; g < group; ++g)
  for (int q0 = q_begin; q0 < p.Sq; q0 += kBlockM) {
    const int h = h0 + g, bh = b * p.H + h;
    __syncthreads();
    load_tile(qs, ld, q + head_offset(p.q, b, h), p.q.s, q0, kBlockM, p.Sq, p.D, 1.f);
    load_tile(dos, ld, dout + head_offset(p.dout, b, h), p.dout.s, q0, kBlockM, p.Sq, p.D, 1.f);
    load_row_stats(lse_s, delta_s, lse, delta, static_cast<int64_t>(bh) * p.Sq, q0, p.Sq);
    __syncthreads();
    prob_and_dscore(p, b, q0, k0, qs, dos, ks, vs, lse_s, delta_s, ps, dss, ld);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) {
        float a = dv_acc[t], c = dk_acc[t];
        for (int i = 0; i < kBlockM; ++i) {
          a = fmaf(ps[i * lds + key], dos[i * ld + d], a);   // dV += P^T dO
          c = fmaf(dss[i * lds + key], qs[i * ld + d], c);  // dK += dS^T Q
        }
        dv_acc[t] = a;
        dk_acc[t] = c;
      }
    }
  }
  const int kj = k0 + key;
  if (kj < p.Sk) {
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) {
        dk[g_off + static_cast<int64_t>(kj) * p.D + d] = from_float<T>(dk_acc[t] * p.scale);
        dv[g_off + static_cast<int64_t>(kj) * p.D + d] = from_float<T>(dv_acc[t]);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dq, AttnCudaParams p) {
  extern __shared__ float smem[];
  const int ld = p.D + 1, lds = kBlockN + 1;
  float* qs = smem;
  float* dos = qs + kBlockM * ld;
  float* ks = dos + kBlockM * ld;
  float* vs = ks + kBlockN * ld;
  float* dss = vs + kBlockN * ld;
  float* lse_s = dss + kBlockM * lds;
  float* delta_s = lse_s + kBlockM;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = kv_head(p, bh), q0 = blockIdx.x * kBlockM;
  const T* km = k + head_offset(p.k, b, hk);
  const T* vm = v + head_offset(p.v, b, hk);
  const int64_t o_off = out_offset(bh, p.Sq, p.D);
  const int row = threadIdx.x / kThreadsPerRow, lane = threadIdx.x % kThreadsPerRow;

  load_tile(qs, ld, q + head_offset(p.q, b, h), p.q.s, q0, kBlockM, p.Sq, p.D, 1.f);
  load_tile(dos, ld, dout + head_offset(p.dout, b, h), p.dout.s, q0, kBlockM, p.Sq, p.D, 1.f);
  load_row_stats(lse_s, delta_s, lse, delta, static_cast<int64_t>(bh) * p.Sq, q0, p.Sq);
  float dq_acc[kDimsPerThread];
#pragma unroll
  for (int t = 0; t < kDimsPerThread; ++t) dq_acc[t] = 0.f;
  const int k_end = p.causal ? min(p.Sk, q0 + kBlockM) : p.Sk;
  for (int k0 = 0; k0 < k_end; k0 += kBlockN) {
    __syncthreads();
    load_tile(ks, ld, km, p.k.s, k0, kBlockN, p.Sk, p.D, 1.f);
    load_tile(vs, ld, vm, p.v.s, k0, kBlockN, p.Sk, p.D, 1.f);
    __syncthreads();
    prob_and_dscore(p, b, q0, k0, qs, dos, ks, vs, lse_s, delta_s, nullptr, dss, ld);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) {
        float a = dq_acc[t];
        for (int j = 0; j < kBlockN; ++j) a = fmaf(dss[row * lds + j], ks[j * ld + d], a);  // dQ += dS K
        dq_acc[t] = a;
      }
    }
  }
  const int qi = q0 + row;
  if (qi < p.Sq) {
#pragma unroll
    for (int t = 0; t < kDimsPerThread; ++t) {
      const int d = lane + t * kThreadsPerRow;
      if (d < p.D) dq[o_off + static_cast<int64_t>(qi) * p.D + d] = from_float<T>(dq_acc[t] * p.scale);
    }
  }
}

#include "attention/attention_wmma.cuh"  // the tensor-core kernels (sm_80+, fp16/bf16)


template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  // Tiles of D = 128 need more than the 48 KB default of dynamic shared memory.
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

cudaError_t check_params(const AttnCudaParams& p) {
  if (p.B <= 0 || p.H <= 0 || p.Hkv <= 0 || p.H % p.Hkv != 0 || p.Sq <= 0 || p.Sk <= 0 || p.D <= 0 ||
      p.D > kAttnCudaMaxHeadDim) {
    return cudaErrorInvalidValue;
  }
  if (static_cast<int64_t>(p.B) * p.H > 65535) return cudaErrorInvalidConfiguration;  // gridDim.y limit
  return cudaSuccess;
}

template <typename T>
cudaError_t forward_typed(const void* q, const void* k, const void* v, void* out, float* lse,
                          const AttnCudaParams& p, cudaStream_t stream) {
  if constexpr (!std::is_same<T, float>::value) {
    if (device_has_tc()) {
      const size_t smem = tc_forward_smem_bytes(p.D);
      cudaError_t err = allow_smem(attn_fwd_tc_kernel<T>, smem);
      if (err != cudaSuccess) return err;
      const dim3 grid((p.Sq + kTcBlockM - 1) / kTcBlockM, p.B * p.H);
      attn_fwd_tc_kernel<T><<<grid, kTcThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                                static_cast<const T*>(v), static_cast<T*>(out), lse, p);
      return cudaGetLastError();
    }
  }
  const int ld = p.D + 1;
  const size_t smem = sizeof(float) * ((kBlockM + 2 * kBlockN) * ld + kBlockM * (kBlockN + 1));
  cudaError_t err = allow_smem(attn_fwd_kernel<T>, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.Sq + kBlockM - 1) / kBlockM, p.B * p.H);
  attn_fwd_kernel<T><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                       static_cast<const T*>(v), static_cast<T*>(out), lse, p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_typed(const void* dout, const void* q, const void* k, const void* v, const void* out,
                           const float* lse, float* delta, void* dq, void* dk, void* dv,
                           const AttnCudaParams& p, cudaStream_t stream) {
  const int64_t n_rows = static_cast<int64_t>(p.B) * p.H * p.Sq;
  attn_bwd_delta_kernel<T><<<static_cast<unsigned>((n_rows + 255) / 256), 256, 0, stream>>>(
      static_cast<const T*>(dout), static_cast<const T*>(out), delta, p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if constexpr (!std::is_same<T, float>::value) {
    if (device_has_tc()) {
      const size_t smem = tc_backward_smem_bytes(p.D);
      if ((err = allow_smem(attn_bwd_dkdv_tc_kernel<T>, smem)) != cudaSuccess) return err;
      if ((err = allow_smem(attn_bwd_dq_tc_kernel<T>, smem)) != cudaSuccess) return err;
      const T* qt = static_cast<const T*>(q);
      const T* kt = static_cast<const T*>(k);
      const T* vt = static_cast<const T*>(v);
      const T* dot = static_cast<const T*>(dout);
      const dim3 grid_kv((p.Sk + kTcBlockN - 1) / kTcBlockN, p.B * p.Hkv);
      attn_bwd_dkdv_tc_kernel<T><<<grid_kv, kTcThreads, smem, stream>>>(qt, kt, vt, dot, lse, delta,
                                                                        static_cast<T*>(dk), static_cast<T*>(dv), p);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
      const dim3 grid_q((p.Sq + kTcBlockM - 1) / kTcBlockM, p.B * p.H);
      attn_bwd_dq_tc_kernel<T><<<grid_q, kTcThreads, smem, stream>>>(qt, kt, vt, dot, lse, delta,
                                                                     static_cast<T*>(dq), p);
      return cudaGetLastError();
    }
  }
  const int ld = p.D + 1, lds = kBlockN + 1;
  const size_t smem_dkdv = sizeof(float) * (2 * (kBlockN + kBlockM) * ld + 2 * kBlockM * lds + 2 * kBlockM);
  const size_t smem_dq = sizeof(float) * (2 * (kBlockN + kBlockM) * ld + kBlockM * lds + 2 * kBlockM);
  if ((err = allow_smem(attn_bwd_dkdv_kernel<T>, smem_dkdv)) != cudaSuccess) return err;
  if ((err = allow_smem(attn_bwd_dq_kernel<T>, smem_dq)) != cudaSuccess) return err;
  const T* qt = static_cast<const T*>(q);
  const T* kt = static_cast<const T*>(k);
  const T* vt = static_cast<const T*>(v);
  const T* dot = static_cast<const T*>(dout);
  const dim3 grid_kv((p.Sk + kBlockN - 1) / kBlockN, p.B * p.Hkv);
  attn_bwd_dkdv_kernel<T><<<grid_kv, kThreads, smem_dkdv, stream>>>(qt, kt, vt, dot, lse, delta,
                                                                     static_cast<T*>(dk), static_cast<T*>(dv), p);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const dim3 grid_q((p.Sq + kBlockM - 1) / kBlockM, p.B * p.H);
  attn_bwd_dq_kernel<T><<<grid_q, kThreads, smem_dq, stream>>>(qt, kt, vt, dot, lse, delta, static_cast<T*>(dq), p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t attention_cuda_forward(AttnDtype dtype, const void* q, const void* k, const void* v, void* out,
                                   float* lse, const AttnCudaParams& p, cudaStream_t stream) {
  const cudaError_t err = check_params(p);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case AttnDtype::kFloat32: return forward_typed<float>(q, k, v, out, lse, p, stream);
    case AttnDtype::kFloat16: return forward_typed<__half>(q, k, v, out, lse, p, stream);
    case AttnDtype::kBFloat16: return forward_typed<__nv_bfloat16>(q, k, v, out, lse, p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t attention_cuda_backward(AttnDtype dtype, const void* grad_out, const void* q, const void* k,
                                    const void* v, const void* out, const float* lse, float* delta, void* dq,
                                    void* dk, void* dv, const AttnCudaParams& p, cudaStream_t stream) {
  const cudaError_t err = check_params(p);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case AttnDtype::kFloat32:
      return backward_typed<float>(grad_out, q, k, v, out, lse, delta, dq, dk, dv, p, stream);
    case AttnDtype::kFloat16:
      return backward_typed<__half>(grad_out, q, k, v, out, lse, delta, dq, dk, dv, p, stream);
    case AttnDtype::kBFloat16:
      return backward_typed<__nv_bfloat16>(grad_out, q, k, v, out, lse, delta, dq, dk, dv, p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace ptft
