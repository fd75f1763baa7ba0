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

// The CPU kernels need contiguous inputs (they pack a kv group's rows as one block); the CUDA
// kernels read (B, H, S, D) inputs by their B/H/S strides and need only a contiguous head dim.
bool layout_ok(const at::Tensor& t) {
  return t.device().is_cpu() ? t.is_contiguous() : (t.size(3) == 1 || t.stride(3) == 1);
}

const char* layout_rule(c10::DeviceType dev) {
  return dev == c10::DeviceType::CPU ? "contiguous" : "contiguous in the head dim";
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
               const OptTensor& pad, const OptTensor& seg, c10::DeviceType dev) {
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().type() == dev, "attention: q, k, v must be on ", dev, ", got ", t->device());
    TORCH_CHECK(t->dim() == 4, "attention: q, k, v must be (B, H, S, D), got ", t->sizes());
    TORCH_CHECK(layout_ok(*t), "attention: q, k, v must be ", layout_rule(dev));
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "attention: q, k, v dtypes differ");
  }
  TORCH_CHECK(k.sizes() == v.sizes(), "attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  TORCH_CHECK(k.size(0) == q.size(0) && k.size(3) == q.size(3),
              "attention: k ", k.sizes(), " does not match q ", q.sizes(), " in B or D");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, "attention: k/v heads ", k.size(1),
              " must divide q heads ", q.size(1), " (grouped-query attention)");
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
  const char* rule = layout_rule(q.device().type());
  TORCH_CHECK(dout.sizes() == q.sizes() && dout.scalar_type() == q.scalar_type() && layout_ok(dout),
              "attention backward: grad_out must be ", rule, " and match q");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == q.scalar_type() && layout_ok(out),
              "attention backward: out must be ", rule, " and match q");
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

#ifdef PTFT_WITH_CUDA
AttnDtype cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return AttnDtype::kFloat32;
    case at::kHalf: return AttnDtype::kFloat16;
    case at::kBFloat16: return AttnDtype::kBFloat16;
    default: TORCH_CHECK(false, "attention_cuda: dtype must be float32, float16 or bfloat16, got ", t);
  }
}

AttnStrides strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

AttnCudaParams cuda_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                           const OptTensor& pad, const OptTensor& seg, double scale) {
  TORCH_CHECK(q.size(3) <= kAttnCudaMaxHeadDim, "attention_cuda: head dim ", q.size(3), " > ",
              kAttnCudaMaxHeadDim);
  TORCH_CHECK(q.size(0) * q.size(1) <= 65535, "attention_cuda: B*H = ", q.size(0) * q.size(1),
              " exceeds the grid limit 65535");
  AttnCudaParams p;
  p.B = static_cast<int>(q.size(0));
  p.H = static_cast<int>(q.size(1));
  p.Hkv = static_cast<int>(k.size(1));
  p.Sq = static_cast<int>(q.size(2));
  p.Sk = static_cast<int>(k.size(2));
  p.D = static_cast<int>(q.size(3));
  p.q = strides(q);
  p.k = strides(k);
  p.v = strides(v);
  p.dout = p.out = AttnStrides{0, 0, 0};  // set by the backward
  p.causal = causal;
  p.key_padding_mask = pad.has_value() ? pad->data_ptr<bool>() : nullptr;
  p.segment_ids = seg.has_value() ? seg->data_ptr<int32_t>() : nullptr;
  p.scale = static_cast<float>(scale);
  return p;
}

std::tuple<at::Tensor, at::Tensor> cuda_forward(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, bool causal, const OptTensor& pad,
                                                const OptTensor& seg, double scale) {
  check_qkv(q, k, v, causal, pad, seg, c10::DeviceType::CUDA);
  const AttnDtype dtype = cuda_dtype(q.scalar_type());
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());  // contiguous, whatever q's strides
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  const cudaError_t err = attention_cuda_forward(dtype, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                                                 lse.data_ptr<float>(), cuda_params(q, k, v, causal, pad, seg, scale),
                                                 c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention_cuda_forward: ", cudaGetErrorString(err));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_backward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool causal, const OptTensor& pad,
    const OptTensor& seg, double scale) {
  check_qkv(q, k, v, causal, pad, seg, c10::DeviceType::CUDA);
  check_backward(dout, q, out, lse);
  TORCH_CHECK(lse.scalar_type() == at::kFloat, "attention_cuda_backward: lse must be float32");
  const AttnDtype dtype = cuda_dtype(q.scalar_type());
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor delta = at::empty_like(lse);
  // contiguous gradients, whatever the inputs' strides
  at::Tensor dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  AttnCudaParams p = cuda_params(q, k, v, causal, pad, seg, scale);
  p.dout = strides(dout);
  p.out = strides(out);
  const cudaError_t err = attention_cuda_backward(
      dtype, dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(),
      delta.data_ptr<float>(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention_cuda_backward: ", cudaGetErrorString(err));
  return {dq, dk, dv};
}
#endif  // PTFT_WITH_CUDA

}  // namespace

void bind_attention(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("attention_cpu_forward", &cpu_forward, "flash-style attention forward on CPU -> (out, lse)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("key_padding_mask"),
        py::arg("segment_ids"), py::arg("scale"));
  m.def("attention_cpu_backward", &cpu_backward, "attention backward on CPU -> (dq, dk, dv)",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("causal"), py::arg("key_padding_mask"), py::arg("segment_ids"), py::arg("scale"));
#ifdef PTFT_WITH_CUDA
  m.def("attention_cuda_forward", &cuda_forward, "flash-style attention forward on CUDA -> (out, lse)",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal"), py::arg("key_padding_mask"),
        py::arg("segment_ids"), py::arg("scale"));
  m.def("attention_cuda_backward", &cuda_backward, "attention backward on CUDA -> (dq, dk, dv)",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"),
        py::arg("causal"), py::arg("key_padding_mask"), py::arg("segment_ids"), py::arg("scale"));
#endif
}

}  // namespace ptft
