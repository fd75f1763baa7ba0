#include "common/bind.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ptft_engine native kernels (C++ CPU, and CUDA when built with it)";
#ifdef PTFT_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
  ptft::bind_attention(m);
  ptft::bind_mlm(m);
  ptft::bind_contrastive(m);
}
