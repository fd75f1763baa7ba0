# tiny kernels: run on one intra-op thread (see shared_helpers.one_torch_thread); on a shared
# 2-core machine two threads turn a float64 gradcheck's tiny matmuls from 3 s into 40 s
from shared_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
