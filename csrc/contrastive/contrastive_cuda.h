// Plain C++ launchers for the CUDA contrastive kernels (no torch types, so the .cu file
// compiles with nvcc alone). Inputs are row-major contiguous; outputs float32. Launchers
// return the launch status (cudaGetLastError).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace ptft {

enum ContrastiveDType : int { kContrastiveF32 = 0, kContrastiveF16 = 1, kContrastiveBF16 = 2 };

// row_lse[i] = logsumexp_j (scale * a_i . b_j) over j != exclude[i]; a (n, d), b (m, d);
// scale: one float on the device; exclude: nullptr or int64 (n,) with -1 for none.
cudaError_t contrastive_row_lse_cuda(const void* a, const void* b, int dtype, const float* scale,
                                     const int64_t* exclude, int64_t n, int64_t m, int64_t d, float* row_lse,
                                     cudaStream_t stream);

// Number of row blocks (entries of ds_partial) the gradient kernel uses for n rows.
int64_t contrastive_cuda_row_blocks(int64_t n);

// da (n, d) = scale * dS @ b with dS_ij = g_row_i exp(S_ij - row_lse_i) + g_col_j exp(S_ij - col_lse_j)
// (either term skipped when its g is nullptr; excluded entries have dS = 0). When ds_partial
// is non-null, ds_partial[blk] = sum over the block's rows of dS_ij * (a_i . b_j).
cudaError_t contrastive_grad_rows_cuda(const void* a, const void* b, int dtype, const float* scale,
                                const int64_t* exclude, const float* row_lse, const float* g_row,
                                const float* col_lse, const float* g_col, int64_t n, int64_t m, int64_t d,
                                float* da, float* ds_partial, cudaStream_t stream);

}  // namespace ptft
