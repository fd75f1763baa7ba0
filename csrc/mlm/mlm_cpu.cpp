#include "mlm/mlm_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ptft {
namespace {

constexpr int64_t kChunk = 256;  // positions per pass: the Philox words stay in L1

// Philox for a run of positions into structure-of-arrays buffers (scalar; also the
// tail of the vector path and the whole path for builds without AVX2).
void draw_scalar(const MlmParams& p, uint64_t sid, uint32_t pos0, int64_t n, uint32_t* u0, uint32_t* u1,
                 uint32_t* u2) {
  for (int64_t j = 0; j < n; ++j) {
    const Philox4x32 r = mlm_draw(p, sid, pos0 + static_cast<uint32_t>(j));
    u0[j] = r.x;
    u1[j] = r.y;
    u2[j] = r.z;
  }
}

#if defined(__AVX2__)
// (hi, lo) 32-bit halves of x * k for eight lanes: vpmuludq on even and odd lanes,
// since compilers otherwise widen to a slow 64-bit multiply.
inline void mulhilo8(__m256i x, __m256i k, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(x, k);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), k);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Same words as draw_scalar, eight positions at a time.
void draw_chunk(const MlmParams& p, uint64_t sid, uint32_t pos0, int64_t n, uint32_t* u0, uint32_t* u1,
                uint32_t* u2) {
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(p.seed), k1 = static_cast<uint32_t>(p.seed >> 32);
  for (int r = 0; r < 10; ++r, k0 += philox_detail::kKeyA, k1 += philox_detail::kKeyB) {
    key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  const __m256i mul_a = _mm256_set1_epi32(static_cast<int>(philox_detail::kRoundA));
  const __m256i mul_b = _mm256_set1_epi32(static_cast<int>(philox_detail::kRoundB));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sid_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(sid)));
  const __m256i sid_hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(sid >> 32)));
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256i x = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(pos0 + static_cast<uint32_t>(j))), lanes);
    __m256i y = sid_lo, z = sid_hi, w = _mm256_setzero_si256();
    for (int r = 0; r < 10; ++r) {
      __m256i hi_b, lo_b, hi_a, lo_a;
      mulhilo8(z, mul_b, hi_b, lo_b);
      mulhilo8(x, mul_a, hi_a, lo_a);
      x = _mm256_xor_si256(_mm256_xor_si256(hi_b, y), key0[r]);
      z = _mm256_xor_si256(_mm256_xor_si256(hi_a, w), key1[r]);
      y = lo_b;
      w = lo_a;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u0 + j), x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u1 + j), y);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(u2 + j), z);
  }
  draw_scalar(p, sid, pos0 + static_cast<uint32_t>(j), n - j, u0 + j, u1 + j, u2 + j);
}
#else
void draw_chunk(const MlmParams& p, uint64_t sid, uint32_t pos0, int64_t n, uint32_t* u0, uint32_t* u1,
                uint32_t* u2) {
  draw_scalar(p, sid, pos0, n, u0, u1, u2);
}
#endif

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
