// Tensor-core (WMMA) attention kernels for fp16/bf16 on sm_80+: the forward and the two-kernel
// backward. Not a stand-alone header: attention_cuda.cu includes it inside its anonymous namespace,
// after the helpers both kernel families share (to_float, from_float, visible, head_offset,
// kv_head, out_offset).
#pragma once
// Tensor-core (WMMA, sm_80+) forward for fp16/bf16 inputs: each CTA of 4 warps owns 64 query
// rows (16 per warp) and walks 64-key tiles. S = Q K^T and O += P V run as 16x16x16 WMMA
// tiles with fp32 accumulation; the online softmax and the masks run on the fp32 S tile in
// shared memory (two lanes per row). O lives in shared memory in fp32 so each key tile can
// rescale it by the row's alpha before accumulating P V (a WMMA fragment does not expose which
// row an element belongs to). fp32 inputs keep the scalar kernels above.
constexpr int kTcBlockM = 64;  // query rows per CTA, 16 per warp
constexpr int kTcBlockN = 64;  // keys per tile
constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcLdS = kTcBlockN + 4;  // fp32 score tile: leading dims are multiples of 4 (fp32) / 8 (16-bit)
constexpr int kTcLdP = kTcBlockN + 8;  // 16-bit probability tile
static_assert(kTcBlockM == 16 * kTcWarps, "one 16-row WMMA strip per warp");

__host__ __device__ constexpr int padded_dim(int D) { return (D + 15) / 16 * 16; }
__host__ __device__ constexpr int tc_ld16(int D) { return padded_dim(D) + 8; }
__host__ __device__ constexpr int tc_ld32(int D) { return padded_dim(D) + 4; }

size_t tc_forward_smem_bytes(int D) {
  return sizeof(uint16_t) * (3 * kTcBlockM * tc_ld16(D) + kTcBlockM * kTcLdP) +
         sizeof(float) * (kTcBlockM * kTcLdS + kTcBlockM * tc_ld32(D));
}

// Rows [row0, row0 + 64) of a (S, D) matrix whose rows are row_stride elements apart into a
// 16-bit tile with leading dimension ld; rows past S and columns past D (up to the 16-padded
// width) are zero.
template <typename T>
__device__ __forceinline__ void load_tile16(T* tile, int ld, const T* src, int64_t row_stride, int row0, int S,
                                            int D) {
  const int width = padded_dim(D);
  for (int idx = threadIdx.x; idx < kTcBlockM * width; idx += kTcThreads) {
    const int r = idx / width, d = idx % width;
    tile[r * ld + d] = (row0 + r < S && d < D) ? src[(row0 + r) * row_stride + d] : from_float<T>(0.f);
  }
}

template <typename T>
__global__ void __launch_bounds__(kTcThreads) attn_fwd_tc_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                                 const T* __restrict__ v, T* __restrict__ out,
                                                                 float* __restrict__ lse, AttnCudaParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int ldh = tc_ld16(p.D), ldo = tc_ld32(p.D), dp = padded_dim(p.D);
  T* qs = reinterpret_cast<T*>(smem_raw);  // (64, ldh)
  T* ks = qs + kTcBlockM * ldh;            // (64, ldh)
  T* vs = ks + kTcBlockN * ldh;            // (64, ldh)
  T* ps = vs + kTcBlockN * ldh;            // (64, kTcLdP) probabilities
  float* ss = reinterpret_cast<float*>(ps + kTcBlockM * kTcLdP);  // (64, kTcLdS) scores
  float* os = ss + kTcBlockM * kTcLdS;                             // (64, ldo) running output
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = kv_head(p, bh), q0 = blockIdx.x * kTcBlockM;
  const T* km = k + head_offset(p.k, b, hk);
  const T* vm = v + head_offset(p.v, b, hk);
  const int64_t o_off = out_offset(bh, p.Sq, p.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r_local = warp * 16 + (lane & 15);  // this lane's row; lanes l and l + 16 share it
  const int part = lane >> 4;                    // which half of the row's columns it handles
  const int qi = q0 + r_local;
  const float scale_log2 = p.scale * 1.4426950408889634f;

  load_tile16(qs, ldh, q + head_offset(p.q, b, h), p.q.s, q0, p.Sq, p.D);
  for (int idx = threadIdx.x; idx < kTcBlockM * ldo; idx += kTcThreads) os[idx] = 0.f;
  float m = -INFINITY, l = 0.f;  // base-2 running max and sum of this lane's row
  const int k_end = p.causal ? min(p.Sk, q0 + kTcBlockM) : p.Sk;  // later keys are invisible
  for (int k0 = 0; k0 < k_end; k0 += kTcBlockN) {
    __syncthreads();  // previous K/V tiles consumed (and, first time, Q and O initialised)
    load_tile16(ks, ldh, km, p.k.s, k0, p.Sk, p.D);
    load_tile16(vs, ldh, vm, p.v.s, k0, p.Sk, p.D);
    __syncthreads();
    for (int n = 0; n < kTcBlockN; n += 16) {  // S_w (16 x 64) = Q_w K^T
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.f);
      for (int kk = 0; kk < dp; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag;  // K^T
        wmma::load_matrix_sync(a_frag, qs + warp * 16 * ldh + kk, ldh);
        wmma::load_matrix_sync(b_frag, ks + n * ldh + kk, ldh);
        wmma::mma_sync(s_frag, a_frag, b_frag, s_frag);
      }
      wmma::store_matrix_sync(ss + warp * 16 * kTcLdS + n, s_frag, kTcLdS, wmma::mem_row_major);
    }
    __syncwarp();
    float* srow = ss + r_local * kTcLdS;
    T* prow = ps + r_local * kTcLdP;
    float mx = -INFINITY;
    for (int j = part * 32; j < part * 32 + 32; ++j) {
      const float s = visible(p, b, qi, k0 + j) ? srow[j] * scale_log2 : -INFINITY;
      srow[j] = s;
      mx = fmaxf(mx, s);
    }
    const float m_new = fmaxf(m, fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16)));
    const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: p = 0
    float psum = 0.f;
    for (int j = part * 32; j < part * 32 + 32; ++j) {
      const float pj = exp2f(srow[j] - m_safe);
      prow[j] = from_float<T>(pj);
      psum += pj;
    }
    const float alpha = exp2f(m - m_safe);
    l = l * alpha + psum + __shfl_xor_sync(0xffffffffu, psum, 16);
    m = m_new;
    float* orow = os + r_local * ldo;
    for (int d = part; d < dp; d += 2) orow[d] *= alpha;
    __syncwarp();
    for (int dn = 0; dn < dp; dn += 16) {  // O_w (16 x dp) += P_w V
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, os + warp * 16 * ldo + dn, ldo, wmma::mem_row_major);
      for (int kk = 0; kk < kTcBlockN; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> p_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> v_frag;
        wmma::load_matrix_sync(p_frag, ps + warp * 16 * kTcLdP + kk, kTcLdP);
        wmma::load_matrix_sync(v_frag, vs + kk * ldh + dn, ldh);
        wmma::mma_sync(o_frag, p_frag, v_frag, o_frag);
      }
      wmma::store_matrix_sync(os + warp * 16 * ldo + dn, o_frag, ldo, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (qi < p.Sq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float* orow = os + r_local * ldo;
    for (int d = part; d < p.D; d += 2) out[o_off + static_cast<int64_t>(qi) * p.D + d] = from_float<T>(orow[d] * inv);
    if (part == 0) lse[static_cast<int64_t>(bh) * p.Sq + qi] = l > 0.f ? (m + log2f(l)) * 0.6931471805599453f : INFINITY;
  }
#endif
}

// The tensor-core kernel needs sm_80+ (bf16 WMMA); older devices keep the scalar one.
bool device_has_tc() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return false;
  return major >= 8;
}

// Tensor-core backward for fp16/bf16 on sm_80+, the same two-kernel schedule as the scalar
// one (no atomics): dK/dV per 64-key CTA over the query tiles that see it, dQ per 64-query CTA
// over its key tiles. Each warp owns 16 rows (keys, or queries) and keeps its dK/dV (or dQ)
// strip in WMMA accumulators (up to 8 of 16 columns: D <= 128). S and dP come from WMMA into
// fp32 shared tiles; P and dS are formed there in fp32 (masks, lse, delta) and rounded to the
// input type for the next WMMA.
size_t tc_backward_smem_bytes(int D) {
  return sizeof(uint16_t) * (4 * kTcBlockM * tc_ld16(D) + 2 * kTcBlockM * kTcLdP) +
         sizeof(float) * (2 * kTcBlockM * kTcLdS + 2 * kTcBlockM);
}

constexpr int kTcMaxFrags = kAttnCudaMaxHeadDim / 16;
using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

// out (16 x 64, fp32, ld kTcLdS) = A (16 x dp, row-major, ld lda) @ B^T where B is (64 x dp)
// row-major with ld ldb: the score-like products Q K^T, dO V^T, K Q^T, V dO^T.
template <typename T>
__device__ __forceinline__ void tc_abt(float* out, const T* A, int lda, const T* B, int ldb, int dp) {
  for (int n = 0; n < kTcBlockN; n += 16) {
    AccFrag acc;
    wmma::fill_fragment(acc, 0.f);
    for (int kk = 0; kk < dp; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
      wmma::load_matrix_sync(fa, A + kk, lda);
      wmma::load_matrix_sync(fb, B + n * ldb + kk, ldb);
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(out + n, acc, kTcLdS, wmma::mem_row_major);
  }
}

// acc[f] (16 x 16 strips of 16 x dp) += A (16 x 64, row-major, ld kTcLdP) @ B (64 x dp, ld ldb).
template <typename T>
__device__ __forceinline__ void tc_ab_acc(AccFrag (&acc)[kTcMaxFrags], const T* A, const T* B, int ldb, int dp) {
#pragma unroll
  for (int f = 0; f < kTcMaxFrags; ++f) {
    if (f * 16 < dp) {
      for (int kk = 0; kk < kTcBlockN; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, A + kk, kTcLdP);
        wmma::load_matrix_sync(fb, B + kk * ldb + f * 16, ldb);
        wmma::mma_sync(acc[f], fa, fb, acc[f]);
      }
    }
  }
}

// Writes the 64 x D result held as warp strips of accumulators (times mul) to dst rows
// [row0, row0 + 64) of a (S, D) matrix, through the fp32 staging buffer stage (64 x ld32).
template <typename T>
__device__ __forceinline__ void tc_store_rows(AccFrag (&acc)[kTcMaxFrags], float mul, float* stage, T* dst,
                                              int row0, int S, int D) {
  const int warp = threadIdx.x / 32, dp = padded_dim(D), ld = tc_ld32(D);
#pragma unroll
  for (int f = 0; f < kTcMaxFrags; ++f) {
    if (f * 16 < dp) {
      for (int t = 0; t < acc[f].num_elements; ++t) acc[f].x[t] *= mul;
      wmma::store_matrix_sync(stage + warp * 16 * ld + f * 16, acc[f], ld, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < kTcBlockM * D; idx += kTcThreads) {
    const int r = idx / D, d = idx % D;
    if (row0 + r < S) dst[static_cast<int64_t>(row0 + r) * D + d] = from_float<T>(stage[r * ld + d]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kTcThreads) attn_bwd_dkdv_tc_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dk, T* __restrict__ dv,
    AttnCudaParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int ldh = tc_ld16(p.D), dp = padded_dim(p.D);
  T* ks = reinterpret_cast<T*>(smem_raw);
  T* vs = ks + kTcBlockN * ldh;
  T* qs = vs + kTcBlockN * ldh;
  T* dos = qs + kTcBlockM * ldh;
  T* pt = dos + kTcBlockM * ldh;        // P^T (keys x queries)
  T* dst = pt + kTcBlockN * kTcLdP;     // dS^T
  float* st = reinterpret_cast<float*>(dst + kTcBlockN * kTcLdP);  // S^T, then P^T in fp32
  float* dpt = st + kTcBlockN * kTcLdS;                               // dP^T
  float* lse_s = dpt + kTcBlockN * kTcLdS;
  float* delta_s = lse_s + kTcBlockM;
  // One CTA per (key block, batch, kv head); it sums over the G query heads sharing the kv head.
  const int bkv = blockIdx.y, b = bkv / p.Hkv, group = p.H / p.Hkv, k0 = blockIdx.x * kTcBlockN;
  const int hk = bkv % p.Hkv, h0 = hk * group;  // the group's first query head
  const int64_t g_off = out_offset(bkv, p.Sk, p.D);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r_local = warp * 16 + (lane & 15), part = lane >> 4, kj = k0 + r_local;
  const float scale_log2 = p.scale * 1.4426950408889634f;

  load_tile16(ks, ldh, k + head_offset(p.k, b, hk), p.k.s, k0, p.Sk, p.D);
  load_tile16(vs, ldh, v + head_offset(p.v, b, hk), p.v.s, k0, p.Sk, p.D);
  AccFrag dk_acc[kTcMaxFrags], dv_acc[kTcMaxFrags];
#pragma unroll
  for (int f = 0; f < kTcMaxFrags; ++f) {
    wmma::fill_fragment(dk_acc[f], 0.f);
    wmma::fill_fragment(dv_acc[f], 0.f);
  }
  const int q_begin = p.causal ? (k0 / kTcBlockM) * kTcBlockM : 0;  // earlier rows see none of these keys
  for (int g = 0; g < group; ++g)
  for (int q0 = q_begin; q0 < p.Sq; q0 += kTcBlockM) {
    const int h = h0 + g, bh = b * p.H + h;
    __syncthreads();
    load_tile16(qs, ldh, q + head_offset(p.q, b, h), p.q.s, q0, p.Sq, p.D);
    load_tile16(dos, ldh, dout + head_offset(p.dout, b, h), p.dout.s, q0, p.Sq, p.D);
    for (int i = threadIdx.x; i < kTcBlockM; i += kTcThreads) {
      const bool in = q0 + i < p.Sq;
      lse_s[i] = in ? lse[static_cast<int64_t>(bh) * p.Sq + q0 + i] * 1.4426950408889634f : INFINITY;
      delta_s[i] = in ? delta[static_cast<int64_t>(bh) * p.Sq + q0 + i] : 0.f;
    }
    __syncthreads();
    float* srow = st + r_local * kTcLdS;
    float* dprow = dpt + r_local * kTcLdS;
    tc_abt(st + warp * 16 * kTcLdS, ks + warp * 16 * ldh, ldh, qs, ldh, dp);    // S^T_w = K_w Q^T
    tc_abt(dpt + warp * 16 * kTcLdS, vs + warp * 16 * ldh, ldh, dos, ldh, dp);  // dP^T_w = V_w dO^T
    __syncwarp();
    for (int j = part * 32; j < part * 32 + 32; ++j) {
      const float pij = visible(p, b, q0 + j, kj) ? exp2f(srow[j] * scale_log2 - lse_s[j]) : 0.f;
      pt[r_local * kTcLdP + j] = from_float<T>(pij);
      dst[r_local * kTcLdP + j] = from_float<T>(pij * (dprow[j] - delta_s[j]));
    }
    __syncwarp();
    tc_ab_acc(dv_acc, pt + warp * 16 * kTcLdP, dos, ldh, dp);   // dV_w += P^T_w dO
    tc_ab_acc(dk_acc, dst + warp * 16 * kTcLdP, qs, ldh, dp);   // dK_w += dS^T_w Q
  }
  __syncthreads();  // the Q/dO tiles are free: stage the results there
  float* stage = reinterpret_cast<float*>(qs);
  tc_store_rows(dk_acc, p.scale, stage, dk + g_off, k0, p.Sk, p.D);
  __syncthreads();
  tc_store_rows(dv_acc, 1.f, stage, dv + g_off, k0, p.Sk, p.D);
#endif
}

template <typename T>
__global__ void __launch_bounds__(kTcThreads) attn_bwd_dq_tc_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, T* __restrict__ dq, AttnCudaParams p) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int ldh = tc_ld16(p.D), dp = padded_dim(p.D);
  T* qs = reinterpret_cast<T*>(smem_raw);
  T* dos = qs + kTcBlockM * ldh;
  T* ks = dos + kTcBlockM * ldh;
  T* vs = ks + kTcBlockN * ldh;
  T* dss = vs + kTcBlockN * ldh;  // dS (the smem size formula also covers the dK/dV kernel's P^T)
  float* ss = reinterpret_cast<float*>(dss + kTcBlockM * kTcLdP);  // S
  float* dps = ss + kTcBlockM * kTcLdS;                                // dP
  float* lse_s = dps + kTcBlockM * kTcLdS;
  float* delta_s = lse_s + kTcBlockM;
  const int bh = blockIdx.y, b = bh / p.H, h = bh % p.H, hk = kv_head(p, bh), q0 = blockIdx.x * kTcBlockM;
  const T* km = k + head_offset(p.k, b, hk);
  const T* vm = v + head_offset(p.v, b, hk);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r_local = warp * 16 + (lane & 15), part = lane >> 4, qi = q0 + r_local;
  const float scale_log2 = p.scale * 1.4426950408889634f;

  load_tile16(qs, ldh, q + head_offset(p.q, b, h), p.q.s, q0, p.Sq, p.D);
  load_tile16(dos, ldh, dout + head_offset(p.dout, b, h), p.dout.s, q0, p.Sq, p.D);
  for (int i = threadIdx.x; i < kTcBlockM; i += kTcThreads) {
    const bool in = q0 + i < p.Sq;
    lse_s[i] = in ? lse[static_cast<int64_t>(bh) * p.Sq + q0 + i] * 1.4426950408889634f : INFINITY;
    delta_s[i] = in ? delta[static_cast<int64_t>(bh) * p.Sq + q0 + i] : 0.f;
  }
  AccFrag dq_acc[kTcMaxFrags];
#pragma unroll
  for (int f = 0; f < kTcMaxFrags; ++f) wmma::fill_fragment(dq_acc[f], 0.f);
  const int k_end = p.causal ? min(p.Sk, q0 + kTcBlockM) : p.Sk;
  for (int k0 = 0; k0 < k_end; k0 += kTcBlockN) {
    __syncthreads();
    load_tile16(ks, ldh, km, p.k.s, k0, p.Sk, p.D);
    load_tile16(vs, ldh, vm, p.v.s, k0, p.Sk, p.D);
    __syncthreads();
    tc_abt(ss + warp * 16 * kTcLdS, qs + warp * 16 * ldh, ldh, ks, ldh, dp);    // S_w = Q_w K^T
    tc_abt(dps + warp * 16 * kTcLdS, dos + warp * 16 * ldh, ldh, vs, ldh, dp);  // dP_w = dO_w V^T
    __syncwarp();
    const float* srow = ss + r_local * kTcLdS;
    const float* dprow = dps + r_local * kTcLdS;
    const float row_lse = lse_s[r_local], row_delta = delta_s[r_local];
    for (int j = part * 32; j < part * 32 + 32; ++j) {
      const float pij = visible(p, b, qi, k0 + j) ? exp2f(srow[j] * scale_log2 - row_lse) : 0.f;
      dss[r_local * kTcLdP + j] = from_float<T>(pij * (dprow[j] - row_delta));
    }
    __syncwarp();
    tc_ab_acc(dq_acc, dss + warp * 16 * kTcLdP, ks, ldh, dp);  // dQ_w += dS_w K
  }
  __syncthreads();
  tc_store_rows(dq_acc, p.scale, reinterpret_cast<float*>(ks), dq + out_offset(bh, p.Sq, p.D), q0, p.Sq, p.D);
#endif
}
