// One thread per token: x covers positions, y covers rows (grid-strided past 65535).
#include <cuda_runtime.h>

#include "mlm/mlm_cuda.h"

namespace ptft {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535u;

template <typename T>
__global__ void mlm_mask_kernel(const T* __restrict__ ids, T* __restrict__ out, T* __restrict__ labels,
                                const int64_t* __restrict__ sample_ids, int64_t rows, int64_t seq,
                                const uint8_t* __restrict__ is_special, const int64_t* __restrict__ allowed,
                                const MlmParams p) {
  const int64_t pos = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pos >= seq) return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t i = row * seq + pos;
    const uint64_t sid = static_cast<uint64_t>(__ldg(sample_ids + row));
    const Philox4x32 r = mlm_draw(p, sid, static_cast<uint32_t>(pos));
    T masked, lab;
    mlm_decide<T>(p, __ldg(ids + i), r, is_special, allowed, &masked, &lab);
    out[i] = masked;
    labels[i] = lab;
  }
}

template <typename T>
cudaError_t launch(const T* ids, T* out, T* labels, const int64_t* sample_ids, int64_t rows, int64_t seq,
                   const uint8_t* is_special, const int64_t* allowed, const MlmParams& p, cudaStream_t stream) {
  if (rows <= 0 || seq <= 0) return cudaSuccess;
  const dim3 block(kThreads);
  const unsigned grid_y = rows < static_cast<int64_t>(kMaxGridY) ? static_cast<unsigned>(rows) : kMaxGridY;
  const dim3 grid(static_cast<unsigned>((seq + kThreads - 1) / kThreads), grid_y);
  mlm_mask_kernel<T><<<grid, block, 0, stream>>>(ids, out, labels, sample_ids, rows, seq, is_special, allowed, p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t mlm_mask_cuda_i64(const int64_t* ids, int64_t* out, int64_t* labels, const int64_t* sample_ids,
                              int64_t rows, int64_t seq, const uint8_t* is_special, const int64_t* allowed,
                              const MlmParams& p, cudaStream_t stream) {
  return launch<int64_t>(ids, out, labels, sample_ids, rows, seq, is_special, allowed, p, stream);
}

cudaError_t mlm_mask_cuda_i32(const int32_t* ids, int32_t* out, int32_t* labels, const int64_t* sample_ids,
                              int64_t rows, int64_t seq, const uint8_t* is_special, const int64_t* allowed,
                              const MlmParams& p, cudaStream_t stream) {
  return launch<int32_t>(ids, out, labels, sample_ids, rows, seq, is_special, allowed, p, stream);
}

}  // namespace ptft
