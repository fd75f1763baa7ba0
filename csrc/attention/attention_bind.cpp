#include "common/bind.h"

namespace ptft {
void bind_attention(pybind11::module_& m) {}
}  // namespace ptft
