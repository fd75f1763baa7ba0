#include "common/bind.h"

namespace ptft {
void bind_contrastive(pybind11::module_& m) {}
}  // namespace ptft
