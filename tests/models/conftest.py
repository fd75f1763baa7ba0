# tiny models: run on one intra-op thread (see shared_helpers.one_torch_thread)
from shared_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
