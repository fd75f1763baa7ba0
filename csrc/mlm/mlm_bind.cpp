#include "common/bind.h"

namespace ptft {
void bind_mlm(pybind11::module_& m) {}
}  // namespace ptft
