// Plain C++ launchers for the CUDA masked-LM kernel (no torch types; see mlm_bind.cpp).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "mlm/mlm_cpu.h"

namespace ptft {

// ids/out/labels (rows, seq) contiguous on the device; sample_ids (rows,); is_special
// (vocab_size,); allowed (n_allowed,). Returns the launch error, if any.
cudaError_t mlm_mask_cuda_i64(const int64_t* ids, int64_t* out, int64_t* labels, const int64_t* sample_ids,
                              int64_t rows, int64_t seq, const uint8_t* is_special, const int64_t* allowed,
                              const MlmParams& p, cudaStream_t stream);
cudaError_t mlm_mask_cuda_i32(const int32_t* ids, int32_t* out, int32_t* labels, const int64_t* sample_ids,
                              int64_t rows, int64_t seq, const uint8_t* is_special, const int64_t* allowed,
                              const MlmParams& p, cudaStream_t stream);

}  // namespace ptft
