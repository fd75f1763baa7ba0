// Row-major GEMM helpers of the CPU attention kernel over the BLAS inside libtorch. Part of
// attention_cpu.cpp, which alone includes it, inside its anonymous namespace (internal linkage).
#pragma once

// BLAS GEMM from the MKL/OpenBLAS that libtorch_cpu carries and exports (ATen's own
// cpublas::gemm wrappers are not exported to extensions). Weak, so a torch without them
// still loads and falls back to the plain loop below.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

// Each parallel task runs its GEMMs on one thread: MKL otherwise starts its own team from
// inside ours, and on a busy machine the spinning threads slow the whole call 10-50x.
class SingleThreadBlas {
 public:
  SingleThreadBlas() : prev_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(prev_);
  }

 private:
  int prev_;
};

// Column-major C (m x n) = alpha * op(A) * op(B) + beta * C, as BLAS defines it.
template <typename T>
void gemm_loop(bool ta, bool tb, int m, int n, int kd, T alpha, const T* a, int lda, const T* b,
               int ldb, T beta, T* c, int ldc) {
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      T acc = 0;
      for (int p = 0; p < kd; ++p) acc += (ta ? a[p + i * lda] : a[i + p * lda]) * (tb ? b[j + p * ldb] : b[p + j * ldb]);
      c[i + j * ldc] = alpha * acc + (beta == T(0) ? T(0) : beta * c[i + j * ldc]);
    }
}

template <typename T>
void blas_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t kd, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const char cta = ta ? 'T' : 'N', ctb = tb ? 'T' : 'N';
  const int im = int(m), in = int(n), ik = int(kd), ila = int(lda), ilb = int(ldb), ilc = int(ldc);
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) return sgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ila, b, &ilb, &beta, c, &ilc);
  } else {
    if (dgemm_) return dgemm_(&cta, &ctb, &im, &in, &ik, &alpha, a, &ila, b, &ilb, &beta, c, &ilc);
  }
  gemm_loop<T>(ta, tb, im, in, ik, alpha, a, ila, b, ilb, beta, c, ilc);
}

// Row-major helpers: a row-major matrix is its transpose in column-major terms, so each
// computes C^T = op(B)^T op(A)^T.
// C (m x n) = alpha * A (m x kd) * B^T (B is n x kd) + beta * C.
template <typename T>
inline void gemm_abt(int64_t m, int64_t n, int64_t kd, T alpha, const T* a, int64_t lda,
                     const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  blas_gemm<T>(true, false, n, m, kd, alpha, b, ldb, a, lda, beta, c, ldc);
}

// C (m x n) = A (m x kd) * B (kd x n) + beta * C.
template <typename T>
inline void gemm_ab(int64_t m, int64_t n, int64_t kd, const T* a, int64_t lda, const T* b,
                    int64_t ldb, T beta, T* c, int64_t ldc) {
  blas_gemm<T>(false, false, n, m, kd, T(1), b, ldb, a, lda, beta, c, ldc);
}

// C (m x n) += A^T * B with A (kd x m), B (kd x n).
template <typename T>
inline void gemm_atb(int64_t m, int64_t n, int64_t kd, const T* a, int64_t lda, const T* b,
                     int64_t ldb, T* c, int64_t ldc) {
  blas_gemm<T>(false, true, n, m, kd, T(1), b, ldb, a, lda, T(1), c, ldc);
}
