import pytest
import torch
from export_fixtures import batch  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models: intra-op threads only add contention on a shared 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
