// CUDA kernels for the chunked contrastive log-sum-exps. One block owns 64 rows of
// S = scale * a @ b.T and sweeps the columns in 64-wide tiles; each of its 256 threads
// owns a 4x4 piece of the tile. fp16/bf16 inputs compute the S tile on tensor cores (WMMA
// 16x16x16, fp32 accumulate, 8 warps x two 16x16 pieces, through a shared fp32 tile);
// fp32 inputs use shared-memory slices of a and b and fp32 FMA. Rows keep an online max / sum; the backward
// recomputes each tile, forms dS from the saved lses and accumulates scale * dS @ b.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <mma.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "contrastive/contrastive_cuda.h"

namespace ptft {
namespace {

constexpr int kBM = 64, kBN = 64, kBK = 16, kBD = 64, kThreads = 256;
// The gradient kernel covers kSlices * kBD features per block (one b_tile buffer reused per
// slice), so each S tile is recomputed only ceil(d / 256) times.
constexpr int kSlices = 4;
constexpr int kLdTile = kBN + 4;  // fp32 (64, 64) tiles: a WMMA store needs a multiple of 4
constexpr int kLd16 = kBK + 8;    // 16-bit (64, 16) slices: a WMMA load needs a multiple of 8

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// Stage rows [r0, r0 + 64) x features [k0, k0 + 16) of x (rows, d) transposed into s[k][r].
template <typename T>
__device__ __forceinline__ void stage_slice(const T* x, int64_t rows, int64_t d, int64_t r0, int64_t k0,
                                            float (*s)[kBM]) {
  for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
    const int r = e / kBK, k = e % kBK;
    const int64_t gr = r0 + r, gk = k0 + k;
    s[k][r] = (gr < rows && gk < d) ? to_f(x[gr * d + gk]) : 0.f;
  }
}

// acc[r][c] = a[i0 + ty + 16 r] . b[j0 + tx + 16 c] over all d features.
template <typename T>
__device__ void raw_tile_fma(const T* a, const T* b, int64_t n, int64_t m, int64_t d, int64_t i0, int64_t j0,
                             float acc[4][4]) {
  __shared__ float as[kBK][kBM];
  __shared__ float bs[kBK][kBM];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.f;
  for (int64_t k0 = 0; k0 < d; k0 += kBK) {
    __syncthreads();
    stage_slice(a, n, d, i0, k0, as);
    stage_slice(b, m, d, j0, k0, bs);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kBK; ++k) {
      float av[4], bv[4];
      for (int q = 0; q < 4; ++q) {
        av[q] = as[k][ty + 16 * q];
        bv[q] = bs[k][tx + 16 * q];
      }
      for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
    }
  }
}

// The same tile on tensor cores for 16-bit inputs: warp w computes rows 16 (w / 2) and
// columns 32 (w % 2) + [0, 32) as two 16x16 WMMA accumulators over d in 16-wide slices, stores
// them to `scratch` (64 x kLdTile fp32, 32-byte aligned), and every thread reads its 4x4 back.
template <typename T>
__device__ void raw_tile_tc(const T* a, const T* b, int64_t n, int64_t m, int64_t d, int64_t i0, int64_t j0,
                            float* scratch, float acc[4][4]) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  __shared__ __align__(32) T as16[kBM * kLd16];
  __shared__ __align__(32) T bs16[kBN * kLd16];
  const int warp = threadIdx.x / 32, wr = warp / 2, wc = (warp % 2) * 2;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c0, c1;
  wmma::fill_fragment(c0, 0.f);
  wmma::fill_fragment(c1, 0.f);
  const T zero = T();  // value-initialised: +0 in both 16-bit formats
  for (int64_t k0 = 0; k0 < d; k0 += kBK) {
    __syncthreads();
    for (int e = threadIdx.x; e < kBM * kBK; e += kThreads) {
      const int r = e / kBK, k = e % kBK;
      const int64_t gk = k0 + k;
      as16[r * kLd16 + k] = (i0 + r < n && gk < d) ? a[(i0 + r) * d + gk] : zero;
      bs16[r * kLd16 + k] = (j0 + r < m && gk < d) ? b[(j0 + r) * d + gk] : zero;
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;  // b^T
    wmma::load_matrix_sync(fa, as16 + wr * 16 * kLd16, kLd16);
    wmma::load_matrix_sync(fb, bs16 + wc * 16 * kLd16, kLd16);
    wmma::mma_sync(c0, fa, fb, c0);
    wmma::load_matrix_sync(fb, bs16 + (wc + 1) * 16 * kLd16, kLd16);
    wmma::mma_sync(c1, fa, fb, c1);
  }
  wmma::store_matrix_sync(scratch + wr * 16 * kLdTile + wc * 16, c0, kLdTile, wmma::mem_row_major);
  wmma::store_matrix_sync(scratch + wr * 16 * kLdTile + (wc + 1) * 16, c1, kLdTile, wmma::mem_row_major);
  __syncthreads();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = scratch[(ty + 16 * r) * kLdTile + tx + 16 * c];
  __syncthreads();  // scratch is free for the caller again
#else
  raw_tile_fma(a, b, n, m, d, i0, j0, acc);
#endif
}

// acc = the raw (64, 64) tile a[i0:] . b[j0:]; scratch is a shared 64 x kLdTile fp32 buffer that
// the tensor-core path passes its result through (and leaves free).
template <typename T>
__device__ __forceinline__ void raw_tile(const T* a, const T* b, int64_t n, int64_t m, int64_t d, int64_t i0,
                                         int64_t j0, float* scratch, float acc[4][4]) {
  if constexpr (std::is_same<T, float>::value) {
    raw_tile_fma(a, b, n, m, d, i0, j0, acc);
  } else {
    raw_tile_tc(a, b, n, m, d, i0, j0, scratch, acc);
  }
}

// Reductions over the 16 threads (one half warp, same ty) that share a row.
__device__ __forceinline__ float row_max16(float v) {
  for (int off = 8; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}
__device__ __forceinline__ float row_sum16(float v) {
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) contrastive_row_lse_kernel(const T* a, const T* b, const float* scale_p,
                                                                       const int64_t* excl, int64_t n, int64_t m,
                                                                       int64_t d, float* out) {
  __shared__ __align__(32) float scratch[std::is_same<T, float>::value ? 1 : kBM * kLdTile];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const float scale = *scale_p;
  float rmax[4], rsum[4];
  int64_t ex[4];
  for (int r = 0; r < 4; ++r) {
    rmax[r] = -INFINITY;
    rsum[r] = 0.f;
    const int64_t row = i0 + ty + 16 * r;
    ex[r] = (excl != nullptr && row < n) ? excl[row] : -1;
  }
  float acc[4][4];
  for (int64_t j0 = 0; j0 < m; j0 += kBN) {
    raw_tile(a, b, n, m, d, i0, j0, scratch, acc);
    for (int r = 0; r < 4; ++r) {
      float t[4], mx = -INFINITY;
      for (int c = 0; c < 4; ++c) {
        const int64_t col = j0 + tx + 16 * c;
        t[c] = (col < m && col != ex[r]) ? acc[r][c] * scale : -INFINITY;
        mx = fmaxf(mx, t[c]);
      }
      const float new_max = fmaxf(rmax[r], row_max16(mx));
      const float shift = new_max == -INFINITY ? 0.f : new_max;  // every entry so far excluded
      float s = 0.f;
      for (int c = 0; c < 4; ++c) s += __expf(t[c] - shift);
      rsum[r] = rsum[r] * __expf(rmax[r] - shift) + row_sum16(s);
      rmax[r] = new_max;
    }
  }
  if (tx == 0) {
    for (int r = 0; r < 4; ++r) {
      const int64_t row = i0 + ty + 16 * r;
      if (row < n) out[row] = rmax[r] + logf(rsum[r]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) contrastive_grad_rows_kernel(
    const T* a, const T* b, const float* scale_p, const int64_t* excl, const float* rlse, const float* grow,
    const float* clse, const float* gcol, int64_t n, int64_t m, int64_t d, float* da, float* ds_partial) {
  __shared__ __align__(32) float ds_tile[kBM][kLdTile];  // scale * dS of the current tile (and S scratch)
  __shared__ float b_tile[kBN][kBD];       // b[cols, one 64-feature slice]
  __shared__ float red[kThreads / 32];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kBM, f0 = static_cast<int64_t>(blockIdx.y) * kBD * kSlices;
  const bool want_ds = ds_partial != nullptr && blockIdx.y == 0;
  const float scale = *scale_p;
  float rl[4], gr[4], out[kSlices][4][4];
  int64_t ex[4];
  for (int r = 0; r < 4; ++r) {
    const int64_t row = i0 + ty + 16 * r;
    const bool ok = row < n;
    ex[r] = (excl != nullptr && ok) ? excl[row] : -1;
    rl[r] = (grow != nullptr && ok) ? rlse[row] : 0.f;
    gr[r] = (grow != nullptr && ok) ? grow[row] : 0.f;
    for (int q = 0; q < kSlices; ++q)
      for (int c = 0; c < 4; ++c) out[q][r][c] = 0.f;
  }
  float ds_local = 0.f;
  float acc[4][4];
  for (int64_t j0 = 0; j0 < m; j0 += kBN) {
    raw_tile(a, b, n, m, d, i0, j0, &ds_tile[0][0], acc);
    for (int c = 0; c < 4; ++c) {
      const int64_t col = j0 + tx + 16 * c;
      const bool col_ok = col < m;
      const float cl = (gcol != nullptr && col_ok) ? clse[col] : 0.f;
      const float gc = (gcol != nullptr && col_ok) ? gcol[col] : 0.f;
      for (int r = 0; r < 4; ++r) {
        const bool ok = col_ok && (i0 + ty + 16 * r) < n && col != ex[r];
        const float t = acc[r][c] * scale;
        float g = 0.f;
        if (ok) {
          if (grow != nullptr) g += gr[r] * __expf(t - rl[r]);
          if (gcol != nullptr) g += gc * __expf(t - cl);
        }
        ds_local += g * acc[r][c];
        ds_tile[ty + 16 * r][tx + 16 * c] = g * scale;
      }
    }
#pragma unroll
    for (int q = 0; q < kSlices; ++q) {
      const int64_t fq = f0 + q * kBD;
      if (fq >= d) continue;  // uniform over the block, so the barriers below stay matched
      for (int e = threadIdx.x; e < kBN * kBD; e += kThreads) {
        const int kk = e / kBD, f = e % kBD;
        const int64_t col = j0 + kk, feat = fq + f;
        b_tile[kk][f] = (col < m && feat < d) ? to_f(b[col * d + feat]) : 0.f;
      }
      __syncthreads();
      for (int kk = 0; kk < kBN; ++kk) {
        float bv[4];
        for (int c = 0; c < 4; ++c) bv[c] = b_tile[kk][tx + 16 * c];
        for (int r = 0; r < 4; ++r) {
          const float dv = ds_tile[ty + 16 * r][kk];
          for (int c = 0; c < 4; ++c) out[q][r][c] = fmaf(dv, bv[c], out[q][r][c]);
        }
      }
      __syncthreads();
    }
  }
  for (int q = 0; q < kSlices; ++q) {
    for (int r = 0; r < 4; ++r) {
      const int64_t row = i0 + ty + 16 * r;
      for (int c = 0; c < 4; ++c) {
        const int64_t feat = f0 + q * kBD + tx + 16 * c;
        if (row < n && feat < d) da[row * d + feat] = out[q][r][c];
      }
    }
  }
  if (want_ds) {
    for (int off = 16; off > 0; off >>= 1) ds_local += __shfl_xor_sync(0xffffffffu, ds_local, off);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = ds_local;
    __syncthreads();
    if (threadIdx.x == 0) {
      float s = 0.f;
      for (int w = 0; w < kThreads / 32; ++w) s += red[w];
      ds_partial[blockIdx.x] = s;
    }
  }
}

template <typename T>
void launch_row_lse(const void* a, const void* b, const float* scale, const int64_t* exclude, int64_t n, int64_t m,
                    int64_t d, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kBM - 1) / kBM));
  contrastive_row_lse_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                               scale, exclude, n, m, d, out);
}

template <typename T>
void launch_grad_rows(const void* a, const void* b, const float* scale, const int64_t* exclude, const float* rlse,
                      const float* grow, const float* clse, const float* gcol, int64_t n, int64_t m, int64_t d,
                      float* da, float* ds_partial, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((n + kBM - 1) / kBM), static_cast<unsigned>((d + kBD * kSlices - 1) / (kBD * kSlices)));
  contrastive_grad_rows_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                                 scale, exclude, rlse, grow, clse, gcol, n, m, d,
                                                                 da, ds_partial);
}

}  // namespace

int64_t contrastive_cuda_row_blocks(int64_t n) { return (n + kBM - 1) / kBM; }

cudaError_t contrastive_row_lse_cuda(const void* a, const void* b, int dtype, const float* scale, const int64_t* exclude,
                              int64_t n, int64_t m, int64_t d, float* row_lse, cudaStream_t stream) {
  switch (dtype) {
    case kContrastiveF16: launch_row_lse<__half>(a, b, scale, exclude, n, m, d, row_lse, stream); break;
    case kContrastiveBF16: launch_row_lse<__nv_bfloat16>(a, b, scale, exclude, n, m, d, row_lse, stream); break;
    default: launch_row_lse<float>(a, b, scale, exclude, n, m, d, row_lse, stream); break;
  }
  return cudaGetLastError();
}

cudaError_t contrastive_grad_rows_cuda(const void* a, const void* b, int dtype, const float* scale, const int64_t* exclude,
                                const float* row_lse, const float* g_row, const float* col_lse, const float* g_col,
                                int64_t n, int64_t m, int64_t d, float* da, float* ds_partial, cudaStream_t stream) {
  switch (dtype) {
    case kContrastiveF16:
      launch_grad_rows<__half>(a, b, scale, exclude, row_lse, g_row, col_lse, g_col, n, m, d, da, ds_partial, stream);
      break;
    case kContrastiveBF16:
      launch_grad_rows<__nv_bfloat16>(a, b, scale, exclude, row_lse, g_row, col_lse, g_col, n, m, d, da, ds_partial,
                                      stream);
      break;
    default:
      launch_grad_rows<float>(a, b, scale, exclude, row_lse, g_row, col_lse, g_col, n, m, d, da, ds_partial, stream);
      break;
  }
  return cudaGetLastError();
}

}  // namespace ptft
