// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), the
// one counter-based RNG shared by CPU and CUDA kernels. Rounds, constants and key
// schedule match triton.language.random.philox_impl and
// ptft_engine/ops/mlm/philox.py, so every backend draws the same words.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PTFT_HOST_DEVICE __host__ __device__
#define PTFT_INLINE __forceinline__
#else
#define PTFT_HOST_DEVICE
#define PTFT_INLINE inline __attribute__((always_inline))
#endif

namespace ptft {

struct Philox4x32 {
  uint32_t x, y, z, w;
};

namespace philox_detail {
constexpr uint32_t kRoundA = 0xD2511F53u;  // multiplies counter word x
constexpr uint32_t kRoundB = 0xCD9E8D57u;  // multiplies counter word z
constexpr uint32_t kKeyA = 0x9E3779B9u;    // Weyl key increments, one per round
constexpr uint32_t kKeyB = 0xBB67AE85u;

PTFT_HOST_DEVICE PTFT_INLINE uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}
}  // namespace philox_detail

// Ten rounds on counter c under key (k0, k1); returns the four output words.
PTFT_HOST_DEVICE PTFT_INLINE Philox4x32 philox4x32_10(Philox4x32 c, uint32_t k0, uint32_t k1) {
  using namespace philox_detail;
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi_b = mulhi32(kRoundB, c.z);
    const uint32_t hi_a = mulhi32(kRoundA, c.x);
    const Philox4x32 next{hi_b ^ c.y ^ k0, kRoundB * c.z, hi_a ^ c.w ^ k1, kRoundA * c.x};
    c = next;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  return c;
}

}  // namespace ptft
