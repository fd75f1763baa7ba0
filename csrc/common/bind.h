// Each op binds its own functions; bindings.cpp only assembles the module.
#pragma once
#include <torch/extension.h>

namespace ptft {
void bind_attention(pybind11::module_& m);
void bind_mlm(pybind11::module_& m);
void bind_contrastive(pybind11::module_& m);
}  // namespace ptft
