// Masked-LM sampling: the per-token rule (shared by the CPU and CUDA kernels, so it
// includes no torch header) and the CPU entry point. The contract is stated in
// ptft_engine/ops/mlm/reference.py.
#pragma once
#include <cstdint>

#include "common/philox.h"

namespace ptft {

struct MlmParams {
  uint64_t seed;
  int64_t mask_token_id;
  int64_t vocab_size;
  uint64_t t_select;      // floor(mask_prob * 2^32), up to 2^32 (hence 64-bit)
  uint64_t t_replace;     // floor(replace_prob * 2^32)
  uint64_t t_random_end;  // t_replace + floor(random_prob * 2^32)
  int64_t n_allowed;      // length of the table of non-special ids
};

constexpr int64_t kMlmIgnoreIndex = -100;

// Philox words for (seed, sample id, position): counter (pos, sid lo, sid hi, 0).
PTFT_HOST_DEVICE PTFT_INLINE Philox4x32 mlm_draw(const MlmParams& p, uint64_t sid, uint32_t pos) {
  const Philox4x32 counter{pos, static_cast<uint32_t>(sid), static_cast<uint32_t>(sid >> 32), 0u};
  return philox4x32_10(counter, static_cast<uint32_t>(p.seed), static_cast<uint32_t>(p.seed >> 32));
}

// One token's (masked id, label) from its id and its Philox words.
template <typename T>
PTFT_HOST_DEVICE PTFT_INLINE void mlm_decide(const MlmParams& p, T id, Philox4x32 r, const uint8_t* is_special,
                                             const int64_t* allowed, T* out, T* label) {
  T masked = id;
  T lab = static_cast<T>(kMlmIgnoreIndex);
  // Ids outside [0, vocab) are never selected (on CUDA they are not range-checked).
  // Branching on selection measured faster on CPU than a branch-free select chain.
  const bool in_vocab = static_cast<uint64_t>(static_cast<int64_t>(id)) < static_cast<uint64_t>(p.vocab_size);
  if (in_vocab && r.x < p.t_select && !is_special[id]) {
    lab = id;
    if (r.y < p.t_replace) {
      masked = static_cast<T>(p.mask_token_id);
    } else if (r.y < p.t_random_end) {
      // multiply-high maps the 32-bit word onto [0, n_allowed)
      const uint64_t pick = (static_cast<uint64_t>(r.z) * static_cast<uint64_t>(p.n_allowed)) >> 32;
      masked = static_cast<T>(allowed[pick]);
    }
  }
  *out = masked;
  *label = lab;
}

// Rows in parallel; ids/out/labels are (rows, seq) contiguous, sample_ids (rows,).
template <typename T>
void mlm_mask_cpu(const T* ids, T* out, T* labels, const int64_t* sample_ids, int64_t rows, int64_t seq,
                  const uint8_t* is_special, const int64_t* allowed, const MlmParams& p);

}  // namespace ptft
