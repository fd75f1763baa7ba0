#include "mlm/mlm_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace ptft {
namespace {

constexpr int64_t kChunk = 256;  // positions per pass: the Philox words stay in L1

// Philox for a run of positions into structure-of-arrays buffers. Kept free of
// branches and table lookups so the compiler vectorises the 32x32->64 multiplies.
void draw_chunk(const MlmParams& p, uint64_t sid, uint32_t pos0, int64_t n, uint32_t* u0, uint32_t* u1,
                uint32_t* u2) {
  for (int64_t j = 0; j < n; ++j) {
    const Philox4x32 r = mlm_draw(p, sid, pos0 + static_cast<uint32_t>(j));
    u0[j] = r.x;
    u1[j] = r.y;
    u2[j] = r.z;
  }
}

template <typename T>
void mask_row(const T* ids, T* out, T* labels, uint64_t sid, int64_t seq, const uint8_t* is_special,
              const int64_t* allowed, const MlmParams& p) {
  alignas(64) uint32_t u0[kChunk];
  alignas(64) uint32_t u1[kChunk];
  alignas(64) uint32_t u2[kChunk];
  for (int64_t start = 0; start < seq; start += kChunk) {
    const int64_t n = std::min(kChunk, seq - start);
    draw_chunk(p, sid, static_cast<uint32_t>(start), n, u0, u1, u2);
    for (int64_t j = 0; j < n; ++j) {
      const Philox4x32 r{u0[j], u1[j], u2[j], 0u};
      mlm_decide<T>(p, ids[start + j], r, is_special, allowed, out + start + j, labels + start + j);
    }
  }
}

}  // namespace

template <typename T>
void mlm_mask_cpu(const T* ids, T* out, T* labels, const int64_t* sample_ids, int64_t rows, int64_t seq,
                  const uint8_t* is_special, const int64_t* allowed, const MlmParams& p) {
  // ~one grain per 16k tokens keeps small batches on one thread (spawn cost > work)
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(seq, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      mask_row<T>(ids + b * seq, out + b * seq, labels + b * seq, static_cast<uint64_t>(sample_ids[b]), seq,
                  is_special, allowed, p);
    }
  });
}

template void mlm_mask_cpu<int64_t>(const int64_t*, int64_t*, int64_t*, const int64_t*, int64_t, int64_t,
                                    const uint8_t*, const int64_t*, const MlmParams&);
template void mlm_mask_cpu<int32_t>(const int32_t*, int32_t*, int32_t*, const int64_t*, int64_t, int64_t,
                                    const uint8_t*, const int64_t*, const MlmParams&);

}  // namespace ptft
