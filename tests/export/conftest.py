from export_fixtures import batch  # noqa: F401  (fixture)
from shared_helpers import one_torch_thread  # noqa: F401  (autouse fixture: tiny models, one thread)
