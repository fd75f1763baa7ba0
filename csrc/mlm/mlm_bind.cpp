// mlm_mask binding: argument checks and output allocation only; math in mlm_cpu.cpp / mlm_cuda.cu.
#include "common/bind.h"
#include "mlm/mlm_cpu.h"

#ifdef PTFT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "mlm/mlm_cuda.h"
#endif

namespace ptft {
namespace {

std::tuple<at::Tensor, at::Tensor> mlm_mask(const at::Tensor& input_ids, const at::Tensor& sample_ids,
                                            const at::Tensor& is_special, const at::Tensor& allowed, uint64_t seed,
                                            int64_t mask_token_id, int64_t vocab_size, int64_t t_select,
                                            int64_t t_replace, int64_t t_random_end) {
  TORCH_CHECK(input_ids.dim() == 2, "mlm_mask: input_ids must be (batch, seq), got ", input_ids.sizes());
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "mlm_mask: input_ids must be int64 or int32, got ", input_ids.scalar_type());
  TORCH_CHECK(input_ids.is_contiguous(), "mlm_mask: input_ids must be contiguous");
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong && sample_ids.is_contiguous() && sample_ids.dim() == 1 &&
                  sample_ids.size(0) == input_ids.size(0),
              "mlm_mask: sample_ids must be a contiguous int64 (", input_ids.size(0), ",) tensor, got ",
              sample_ids.scalar_type(), " ", sample_ids.sizes());
  TORCH_CHECK(vocab_size >= 1 && vocab_size < (int64_t{1} << 31), "mlm_mask: vocab_size out of range: ", vocab_size);
  TORCH_CHECK(is_special.scalar_type() == at::kByte && is_special.is_contiguous() && is_special.numel() == vocab_size,
              "mlm_mask: is_special must be a contiguous uint8 (vocab_size=", vocab_size, ",) table");
  TORCH_CHECK(allowed.scalar_type() == at::kLong && allowed.is_contiguous() && allowed.dim() == 1,
              "mlm_mask: allowed must be a contiguous int64 1-d table");
  TORCH_CHECK(mask_token_id >= 0 && mask_token_id < vocab_size, "mlm_mask: mask_token_id out of range: ",
              mask_token_id);
  const int64_t two32 = int64_t{1} << 32;
  TORCH_CHECK(t_select >= 0 && t_select <= two32 && t_replace >= 0 && t_replace <= t_random_end &&
                  t_random_end <= two32,
              "mlm_mask: thresholds must satisfy 0 <= t_replace <= t_random_end <= 2^32 and 0 <= t_select <= 2^32");
  TORCH_CHECK(t_random_end == t_replace || allowed.numel() > 0, "mlm_mask: random replacement needs allowed ids");
  const auto device = input_ids.device();
  for (const at::Tensor* t : {&sample_ids, &is_special, &allowed}) {
    TORCH_CHECK(t->device() == device, "mlm_mask: all tensors must be on ", device, ", found one on ", t->device());
  }

  const MlmParams p{seed,
                    mask_token_id,
                    vocab_size,
                    static_cast<uint64_t>(t_select),
                    static_cast<uint64_t>(t_replace),
                    static_cast<uint64_t>(t_random_end),
                    allowed.numel()};
  at::Tensor out = at::empty_like(input_ids);
  at::Tensor labels = at::empty_like(input_ids);
  const int64_t rows = input_ids.size(0);
  const int64_t seq = input_ids.size(1);
  TORCH_CHECK(seq < two32, "mlm_mask: sequence length does not fit the 32-bit position counter");
  const auto* special = is_special.data_ptr<uint8_t>();
  const auto* table = allowed.data_ptr<int64_t>();
  const auto* sids = sample_ids.data_ptr<int64_t>();

  if (device.is_cuda()) {
#ifdef PTFT_WITH_CUDA
    const c10::cuda::CUDAGuard guard(device);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const cudaError_t err =
        input_ids.scalar_type() == at::kLong
            ? mlm_mask_cuda_i64(input_ids.data_ptr<int64_t>(), out.data_ptr<int64_t>(), labels.data_ptr<int64_t>(),
                                sids, rows, seq, special, table, p, stream)
            : mlm_mask_cuda_i32(input_ids.data_ptr<int32_t>(), out.data_ptr<int32_t>(), labels.data_ptr<int32_t>(),
                                sids, rows, seq, special, table, p, stream);
    TORCH_CHECK(err == cudaSuccess, "mlm_mask: CUDA launch failed: ", cudaGetErrorString(err));
    return {out, labels};
#else
    TORCH_CHECK(false, "mlm_mask: ptft_engine._C was built without CUDA kernels");
#endif
  }
  TORCH_CHECK(device.is_cpu(), "mlm_mask: unsupported device ", device);
  if (input_ids.scalar_type() == at::kLong) {
    mlm_mask_cpu<int64_t>(input_ids.data_ptr<int64_t>(), out.data_ptr<int64_t>(), labels.data_ptr<int64_t>(), sids,
                          rows, seq, special, table, p);
  } else {
    mlm_mask_cpu<int32_t>(input_ids.data_ptr<int32_t>(), out.data_ptr<int32_t>(), labels.data_ptr<int32_t>(), sids,
                          rows, seq, special, table, p);
  }
  return {out, labels};
}

}  // namespace

void bind_mlm(pybind11::module_& m) {
  m.def("mlm_mask", &mlm_mask, "Philox-deterministic BERT masking; see ptft_engine/ops/mlm/reference.py",
        pybind11::arg("input_ids"), pybind11::arg("sample_ids"), pybind11::arg("is_special"), pybind11::arg("allowed"),
        pybind11::arg("seed"), pybind11::arg("mask_token_id"), pybind11::arg("vocab_size"), pybind11::arg("t_select"),
        pybind11::arg("t_replace"), pybind11::arg("t_random_end"));
}

}  // namespace ptft
