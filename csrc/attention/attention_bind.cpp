// Argument checks and pybind11 bindings for attention; the math lives in the kernels.
#include "common/bind.h"

#include "attention/attention_cpu.h"
#ifdef PTFT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention/attention_cuda.h"
#endif

namespace ptft {
namespace {

using OptTensor = std::optional<at::Tensor>;

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
               const OptTensor& pad, const OptTensor& seg, c10::DeviceType dev) {
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().type() == dev, "attention: q, k, v must be on ", dev, ", got ", t->device());
    TORCH_CHECK(t->dim() == 4, "attention: q, k, v must be (B, H, S, D), got ", t->sizes());
    TORCH_CHECK(t->is_contiguous(), "attention: q, k, v must be contiguous");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "attention: q, k, v dtypes differ");
  }
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
              "attention: k ", k.sizes(), " does not match q ", q.sizes(), " in B, H or D");
  TORCH_CHECK(!(causal || seg.has_value()) || k.size(2) == q.size(2),
              "attention: causal/segment_ids need equal query and key lengths");
  if (pad.has_value()) {
    TORCH_CHECK(pad->scalar_type() == at::kBool && pad->is_contiguous() && pad->dim() == 2 &&
                    pad->size(0) == q.size(0) && pad->size(1) == k.size(2) && pad->device() == q.device(),
                "attention: key_padding_mask must be a contiguous bool (B, S_k) tensor on q's device");
  }
  if (seg.has_value()) {
    TORCH_CHECK(seg->scalar_type() == at::kInt && seg->is_contiguous() && seg->dim() == 2 &&
                    seg->size(0) == q.size(0) && seg->size(1) == q.size(2) && seg->device() == q.device(),
                "attention: segment_ids must be a contiguous int32 (B, S) tensor on q's device");
  }
}

void check_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& out,
                    const at::Tensor& lse) {
  TORCH_CHECK(dout.sizes() == q.sizes() && dout.scalar_type() == q.scalar_type() && dout.is_contiguous(),
              "attention backward: grad_out must be contiguous and match q");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && out.is_contiguous(),
              "attention backward: out must be contiguous and match q");
  TORCH_CHECK(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(1) &&
                  lse.size(2) == q.size(2) && lse.is_contiguous(),
              "attention backward: lse must be contiguous (B, H, S_q)");
}

std::tuple<at::Tensor, at::Tensor> cpu_forward(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, bool causal, const OptTensor& pad,
                                               const OptTensor& seg, double scale) {
  check_qkv(q, k, v, causal, pad, seg, c10::DeviceType::CPU);
  const auto t = q.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kDouble,
              "attention_cpu_forward: dtype must be float32, bfloat16 or float64, got ", t);
  return attention_cpu_forward(q, k, v, causal, pad, seg, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal, const OptTensor& pad,
    const OptTensor& seg, double scale) {
  check_qkv(q, k, v, causal, pad, seg, c10::DeviceType::CPU);
  check_backward(dout, q, out, lse);
  TORCH_CHECK(lse.scalar_type() == (q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "attention_cpu_backward: lse must be float32 (float64 for float64 inputs)");
  return attention_cpu_backward(dout, q, k, v, out, lse, causal, pad, seg, scale);
}

}  // namespace

void bind_attention(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("attention_cpu_forward", &cpu_forward, "flash-style attention forward on CPU -> (out, lse)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("key_padding_mask"),
        py::arg("segment_ids"), py::arg("scale"));
  m.def("attention_cpu_backward", &cpu_backward, "attention backward on CPU -> (dq, dk, dv)",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("causal"), py::arg("key_padding_mask"), py::arg("segment_ids"), py::arg("scale"));
}

}  // namespace ptft
